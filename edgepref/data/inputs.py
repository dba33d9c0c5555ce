"""Reading instructions: JSONL, JSON, CSV, Parquet, a `save_to_disk` directory or a Hub dataset.

A row gives an instruction (the `instruction` or `prompt` column, or the one --column names) or
a conversation (the `messages` or `conversations` column, or the one --messages-column names;
see conversations.py for the shapes; a CSV cell holds it as JSON text), and may give its own
system prompt in a `system` column. A row with both a conversation and an instruction uses the
conversation when its cell is not empty, else the instruction. An explicit --column alone reads
that column only: the conversation columns are then read only when --messages-column names one.

Every row either becomes a `Record` or an `InputProblem` with its row number and the reason
(not JSON, not UTF-8, no instruction, blank instruction: nothing printable in it, a conversation
that cannot be answered). Duplicates (the same instruction, or the same whole conversation and
system prompt) are kept once and counted. A missing instruction column is an error that lists
the columns there are; so is a path that looks local and is not there (it is not tried as a Hub
name).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.checks import check_path, dataclass_problem
from ..core.errors import InputError
from ..core.records import Record
from .conversations import (
    CONVERSATION_COLUMNS,
    SYSTEM_COLUMN,
    history_problem,
    merge_system,
    parse_conversation,
    parse_system,
    record_content_id,
    record_key,
)
from .printable import has_printable

FALLBACK_COLUMNS = ("instruction", "prompt")
# file types that are read as local files (`rows_from_datasets`); a missing path that ends in one
# of these is a mistyped file, not a Hub dataset name
LOCAL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".arrow")
# a Hub dataset id: NAME or OWNER/NAME of letters, digits, "-", "_" and ".", not at either end
# (huggingface_hub's REPO_ID_REGEX)
HUB_ID = re.compile(r"(\b[\w\-.]+\b/)?\b[\w\-.]+\b")


@dataclass
class InputProblem:
    row: int  # 1-based row (line) number in the input
    reason: str
    id: str | None = None


@dataclass
class InputBatch:
    records: list[Record] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)
    duplicates: int = 0
    rows_read: int = 0
    column: str | None = "instruction"  # the instruction column; None when the input has only conversations
    # the conversation columns read, in order: a row's conversation is the first with a value
    messages_columns: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None  # (index, count) when this is one shard of the input


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' with 0 <= I < N (the numbering of SLURM_ARRAY_TASK_ID=0.. and Kubernetes
    JOB_COMPLETION_INDEX)."""
    index, sep, count = str(spec).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise InputError(
            f"--shard {spec!r} is not I/N with 0 <= I < N",
            "shards count from 0: with 4 machines use --shard 0/4 ... --shard 3/4",
        )
    return i, n


def as_shard(value: object, name: str = "shard") -> tuple[int, int] | None:
    """A shard given to the Python API: None, "I/N" (as --shard), or (I, N) with 0 <= I < N."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_shard(value)
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        i, n = value
        if n >= 1 and 0 <= i < n:
            return i, n
    raise InputError(f"{name} = {value!r}: expected (I, N) or \"I/N\" with 0 <= I < N",
                     "shards count from 0: with 4 machines use (0, 4) ... (3, 4)")


def shard_index(text: str, count: int) -> int:
    """The shard an instruction belongs to: a hash of its text (`record_key`: the whole
    conversation for a conversation), so the split does not depend on row order, and an
    instruction that appears twice lands in one shard."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16) % count


def take_shard(batch: InputBatch, index: int, count: int) -> InputBatch:
    """This shard's share of a batch. Input problems go to shard (row number mod count) and the
    duplicate count to shard 0, so that merged shards report each exactly once."""
    return InputBatch(
        records=[r for r in batch.records if shard_index(record_key(r), count) == index],
        problems=[p for p in batch.problems if p.row % count == index],
        duplicates=batch.duplicates if index == 0 else 0,
        rows_read=batch.rows_read,
        column=batch.column,
        messages_columns=batch.messages_columns,
        shard=(index, count),
    )


def _pick_columns(columns: list[str], wanted: str | None, wanted_messages: str | None,
                  source: str) -> tuple[str | None, tuple[str, ...]]:
    """(the instruction column, the conversation columns) to read; at least one of them. Without
    --messages-column, both `messages` and `conversations` are read when both are there (a
    file may mix OpenAI rows and ShareGPT rows)."""
    listed = ", ".join(columns) or "(none)"
    for name, flag in ((wanted, "--column"), (wanted_messages, "--messages-column")):
        if name and name not in columns:
            raise InputError(f"{source} has no column {name!r}; its columns are: {listed}", f"pick one with {flag} NAME")
    if wanted_messages:
        messages: tuple[str, ...] = (wanted_messages,)
    elif wanted:  # the user named the instruction column: read that one alone
        messages = ()
    else:
        messages = tuple(name for name in CONVERSATION_COLUMNS if name in columns)
    instruction = wanted or next((name for name in FALLBACK_COLUMNS if name in columns), None)
    if instruction is None and not messages:
        raise InputError(
            f"{source} has no 'instruction' or 'prompt' column, nor a 'messages' or 'conversations' one; "
            f"its columns are: {listed}",
            "pick the instruction column with --column NAME, or a conversation column with --messages-column NAME",
        )
    return instruction, messages


def iter_jsonl_rows(path: Path):
    """(line number, row dict or None, problem or None) for each non-empty line."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM (Windows editors) is not row 1's text
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield n, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
                continue
            if not line.strip():
                continue
            row, problem = parse_json_row(line)
            yield n, row, problem


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json_row(line: str) -> tuple[dict | None, str | None]:
    """One JSONL line as (an object, None) or (None, why it is not one). NaN and Infinity, which
    Python's json reads, are refused: the row's fields are written back out as JSON."""
    try:
        row = json.loads(line, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at column {exc.colno})"
    except ValueError as exc:  # NaN, or an integer longer than Python converts
        return None, f"not JSON ({exc})"
    except RecursionError:
        return None, "not JSON (nested too deeply)"
    if not isinstance(row, dict):
        return None, f"a JSON {type(row).__name__}, not an object"
    try:  # "\ud800" escapes decode to lone surrogates, which cannot be written as UTF-8 again
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return None, f"not valid Unicode (lone surrogate U+{ord(exc.object[exc.start]):04X})"
    return row, None


def refuse_missing_local_path(source: str) -> None:
    """Raise InputError for a path that looks local (a data file's suffix, or not shaped like a
    Hub dataset id) and does not exist, so that a typo is not retried over the network as a
    dataset name."""
    path = Path(source)
    if path.exists() or (path.suffix.lower() not in LOCAL_SUFFIXES and HUB_ID.fullmatch(source)):
        return
    near = []
    if path.parent.is_dir():
        near = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=1)
    hint = (f"did you mean {path.parent / near[0]}?" if near
            else "check the path; a Hugging Face dataset is named NAME or OWNER/NAME (with --split)")
    raise InputError(f"no such file: {source}", hint)


def rows_from_datasets(source: str, split: str | None) -> tuple[list[dict], list[str]]:
    import datasets

    path = Path(source)
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
        elif path.is_file():
            kind = {".csv": "csv", ".parquet": "parquet", ".json": "json", ".tsv": "csv"}.get(path.suffix.lower())
            if kind is None:
                raise InputError(f"cannot read {path}: unknown file type {path.suffix!r}",
                                 "use .jsonl, .json, .csv, .parquet or a dataset directory")
            extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            ds = datasets.load_dataset(kind, data_files=str(path), split="train", **extra)
        else:
            ds = datasets.load_dataset(source, split=split or "train")
    except InputError:
        raise
    except Exception as exc:
        offline = "offline" in str(exc).lower() or "connect" in str(exc).lower()
        raise InputError(
            f"cannot load {source!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "with HF_HUB_OFFLINE=1 only datasets already in the cache load" if offline
            else "check the path or dataset name (and --split)",
        ) from exc
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("train" if "train" in ds else next(iter(ds)))
        if name not in ds:
            raise InputError(f"{source} has no split {name!r}; it has {', '.join(ds)}", "pick one with --split")
        ds = ds[name]
    return ds.to_list(), list(ds.column_names)


def read_instructions(
    source: str | Path,
    *,
    column: str | None = None,
    messages_column: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
) -> InputBatch:
    """Read instructions and conversations from any supported source into Records (nothing is
    silently dropped). `column` names the instruction column, `messages_column` the conversation
    column (see the module docstring for which is read). `shard=(i, n)` keeps the i-th of n
    deterministic shares (after shuffle and limit)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"--limit {limit!r}: expected an integer >= 1", "leave --limit out to read every row")
    check_path("source", source)
    for name, value in (("column", column), ("messages_column", messages_column), ("split", split)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"{name} = {value!r}: expected a column name (a str) or None")
    if not isinstance(shuffle, bool) or isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"shuffle = {shuffle!r}, seed = {seed!r}: expected a bool and an integer")
    shard = as_shard(shard)
    source = str(source)
    path = Path(source)
    refuse_missing_local_path(source)
    rows: list[tuple[int, dict | None, str | None]]
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        if not path.is_file():
            raise InputError(f"{path} is not a file", "give a JSONL file, or a dataset directory without .jsonl")
        rows = list(iter_jsonl_rows(path))
        seen_cols: list[str] = []
        for _, row, _ in rows:
            if row:
                seen_cols.extend(k for k in row if k not in seen_cols)
        good = [r for _, r, p in rows if r is not None]
        if good:
            col, mcols = _pick_columns(seen_cols, column, messages_column, str(path))
        else:
            col, mcols = column or "instruction", (messages_column,) if messages_column else ()
    else:
        data, columns = rows_from_datasets(source, split)
        col, mcols = _pick_columns(columns, column, messages_column, source)
        rows = [(i, row, None) for i, row in enumerate(data, start=1)]
    if shuffle:
        random.Random(seed).shuffle(rows)
    batch = InputBatch(column=col, messages_columns=mcols)
    seen: set[tuple[bool, str]] = set()
    for n, row, problem in rows:
        if limit is not None and len(batch.records) >= limit:
            break
        batch.rows_read += 1
        if problem:
            batch.problems.append(InputProblem(n, problem))
            continue
        record, why = _record_from_input_row(row, col, mcols)
        if record is None:
            batch.problems.append(InputProblem(n, why, str(row["id"]) if row.get("id") is not None else None))
            continue
        # a single-turn row is never a duplicate of a conversation, whatever its text
        key = (record.is_conversation, record_key(record))
        if key in seen:
            batch.duplicates += 1
            continue
        seen.add(key)
        batch.records.append(record)
    ids = [r.id for r in batch.records]
    if len(set(ids)) != len(ids):  # ids in the input repeat: fall back to content ids
        for r in batch.records:
            r.id = record_content_id(r)
    if shard is not None:
        return take_shard(batch, *shard)
    return batch


def _is_empty_cell(value: object) -> bool:
    """No value in this cell: None, or NaN (an empty CSV cell of a column pandas read as numbers)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _record_from_input_row(row: dict, col: str | None,
                           mcols: tuple[str, ...]) -> tuple[Record | None, str | None]:
    """(the Record of one input row, None) or (None, why the row cannot be one). A conversation
    cell with a value wins over the instruction; the id is the row's `id`, else one from its content."""
    system, why = parse_system(row.get(SYSTEM_COLUMN))
    if why:
        return None, why
    mcol = next((name for name in mcols if not _is_empty_cell(row.get(name))), None)
    if mcol is not None:
        conversation, why = parse_conversation(row[mcol], mcol)
        if conversation is None:
            return None, why
        system, why = merge_system(system, conversation)
        if why:
            return None, why
        instruction, history = conversation.instruction, conversation.history
    else:
        instruction, why = _instruction_cell(row, col, mcols)
        if instruction is None:
            return None, why
        history = []
    extra = {k: v for k, v in row.items() if k not in (col, *mcols, SYSTEM_COLUMN, "id")}
    record = Record(id="", instruction=instruction, history=history, system=system, extra=_jsonable(extra))
    record.id = str(row["id"]) if row.get("id") is not None else record_content_id(record)
    return record, None


def _instruction_cell(row: dict, col: str | None, mcols: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(the row's instruction, stripped, None) or (None, why it has none)."""
    value = row.get(col) if col is not None else None
    if value is None:
        names = " or ".join(repr(c) for c in (*mcols, col) if c is not None)
        return None, f"no {names} field"
    if not isinstance(value, str):
        return None, f"{col!r} is a {type(value).__name__}, not text"
    text = value.strip()
    if not has_printable(text):
        return None, f"blank {col!r}" + (" (only invisible characters)" if text else "")
    return text, None


def _jsonable(value):
    """An input row's other fields as strict JSON: NaN and infinities (an empty numeric cell of a
    CSV) become null, other objects (timestamps, bytes) their text; records.jsonl stays JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)


def read_records(path: str | Path) -> tuple[list[Record], list[InputProblem]]:
    """Records written by a previous stage (records.jsonl); rows that are not records are reported."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"records file not found: {path}", "run the previous stage first")
    records, problems = [], []
    for n, row, problem in iter_jsonl_rows(path):
        if problem:
            problems.append(InputProblem(n, problem))
            continue
        record, why = _record_from_row(row)
        if record is None:
            problems.append(InputProblem(n, f"not a record ({why})"))
            continue
        records.append(record)
    return records, problems


def _record_from_row(row: dict) -> tuple[Record | None, str | None]:
    """(the Record, None), or (None, why a JSON object cannot be one: a hand-edited or foreign file)."""
    if not isinstance(row.get("id"), str) or not isinstance(row.get("instruction"), str):
        return None, "needs id and instruction as text"
    why = history_problem(row.get("history") or [], row.get("system"))
    if why:
        return None, why
    for key in ("completions", "ratings"):
        items = row.get(key, [])
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            return None, f"{key} is not a list of objects"
    try:
        record = Record.from_row(row)
    except (TypeError, ValueError) as exc:  # a completion or rating without a field it needs
        return None, str(exc)
    problem = dataclass_problem(record)  # a field of the wrong type, anywhere in the row
    return (None, problem) if problem else (record, None)


def is_records_file(path: Path) -> bool:
    """Whether `path` is records JSONL written by a stage (its first row has completions)."""
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = next((line for line in fh if line.strip()), "")
    return '"completions"' in first


def read_stage_input(
    source: str | Path, *, shard: tuple[int, int] | None = None, **instruction_options
) -> tuple[list[Record], list[InputProblem]]:
    """What a single stage reads: records from a previous stage's JSONL (only shard `shard` of
    them when given), or fresh records from any instructions source (`read_instructions`)."""
    path = Path(source)
    if is_records_file(path):
        records, problems = read_records(path)
        if shard:
            records = [r for r in records if shard_index(record_key(r), shard[1]) == shard[0]]
        return records, problems
    batch = read_instructions(source, shard=shard, **instruction_options)
    return batch.records, batch.problems
