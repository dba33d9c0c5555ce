"""Reading instructions: JSONL, JSON, CSV, Parquet, a `save_to_disk` directory or a Hub dataset.

Every row either becomes a `Record` or an `InputProblem` with its row number and the reason
(not JSON, not UTF-8, no instruction, blank instruction: nothing printable in it). Duplicate
instructions are kept once and counted. A missing instruction column is an error that lists the
columns there are; so is a path that looks local and is not there (it is not tried as a Hub name).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..core.records import Record, content_key

FALLBACK_COLUMNS = ("instruction", "prompt")
# file types that are read as local files (`rows_from_datasets`); a missing path that ends in one
# of these is a mistyped file, not a Hub dataset name
LOCAL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".arrow")
# a Hub dataset id: NAME or OWNER/NAME of letters, digits, "-", "_" and ".", not at either end
# (huggingface_hub's REPO_ID_REGEX)
HUB_ID = re.compile(r"(\b[\w\-.]+\b/)?\b[\w\-.]+\b")
# Letters that draw nothing: Hangul fillers and the blank Braille pattern (category Lo/So, so
# unicodedata alone counts them as printable); used to dodge "blank" checks.
INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Unicode categories with nothing to read: controls, format characters (zero-width space and
# joiners, direction marks, BOM, soft hyphen), surrogates, and separators (spaces, line breaks)
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})


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
    column: str = "instruction"
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


def shard_index(text: str, count: int) -> int:
    """The shard an instruction belongs to: a hash of its text, so the split does not depend on
    row order, and an instruction that appears twice lands in one shard."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16) % count


def take_shard(batch: InputBatch, index: int, count: int) -> InputBatch:
    """This shard's share of a batch. Input problems go to shard (row number mod count) and the
    duplicate count to shard 0, so that merged shards report each exactly once."""
    return InputBatch(
        records=[r for r in batch.records if shard_index(r.instruction, count) == index],
        problems=[p for p in batch.problems if p.row % count == index],
        duplicates=batch.duplicates if index == 0 else 0,
        rows_read=batch.rows_read,
        column=batch.column,
        shard=(index, count),
    )


def _pick_column(columns: list[str], wanted: str | None, source: str) -> str:
    if wanted:
        if wanted not in columns:
            raise InputError(
                f"{source} has no column {wanted!r}; its columns are: {', '.join(columns) or '(none)'}",
                "pick one with --column NAME",
            )
        return wanted
    for name in FALLBACK_COLUMNS:
        if name in columns:
            return name
    raise InputError(
        f"{source} has no 'instruction' or 'prompt' column; its columns are: {', '.join(columns) or '(none)'}",
        "pick the instruction column with --column NAME",
    )


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


def has_printable(text: str) -> bool:
    """Whether `text` has a character that draws something (not whitespace, a control, a
    zero-width or direction mark, or a blank filler letter)."""
    return any(unicodedata.category(ch) not in INVISIBLE_CATEGORIES and ch not in INVISIBLE_LETTERS
               for ch in text)


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
    split: str | None = None,
    limit: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
) -> InputBatch:
    """Read instructions from any supported source into Records (nothing is silently dropped).
    `shard=(i, n)` keeps the i-th of n deterministic shares (after shuffle and limit)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"--limit {limit!r}: expected an integer >= 1", "leave --limit out to read every row")
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
            col = _pick_column(seen_cols, column, str(path))
        else:
            col = column or "instruction"
    else:
        data, columns = rows_from_datasets(source, split)
        col = _pick_column(columns, column, source)
        rows = [(i, row, None) for i, row in enumerate(data, start=1)]
    if shuffle:
        random.Random(seed).shuffle(rows)
    batch = InputBatch(column=col)
    seen: set[str] = set()
    for n, row, problem in rows:
        if limit is not None and len(batch.records) >= limit:
            break
        batch.rows_read += 1
        if problem:
            batch.problems.append(InputProblem(n, problem))
            continue
        rid = str(row["id"]) if row.get("id") is not None else None
        value = row.get(col)
        if value is None:
            batch.problems.append(InputProblem(n, f"no {col!r} field", rid))
            continue
        if not isinstance(value, str):
            batch.problems.append(InputProblem(n, f"{col!r} is a {type(value).__name__}, not text", rid))
            continue
        text = value.strip()
        if not has_printable(text):
            why = f"blank {col!r}" + (" (only invisible characters)" if text else "")
            batch.problems.append(InputProblem(n, why, rid))
            continue
        if text in seen:
            batch.duplicates += 1
            continue
        seen.add(text)
        extra = {k: v for k, v in row.items() if k not in (col, "id")}
        record_id = rid if rid is not None else content_key("instruction", text)
        batch.records.append(Record(id=record_id, instruction=text, extra=_jsonable(extra)))
    ids = [r.id for r in batch.records]
    if len(set(ids)) != len(ids):  # ids in the input repeat: fall back to content ids
        for r in batch.records:
            r.id = content_key("instruction", r.instruction)
    if shard is not None:
        return take_shard(batch, *shard)
    return batch


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
    for key in ("completions", "ratings"):
        items = row.get(key, [])
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            return None, f"{key} is not a list of objects"
    try:
        return Record.from_row(row), None
    except (TypeError, ValueError) as exc:  # a completion or rating without a field it needs
        return None, str(exc)


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
            records = [r for r in records if shard_index(r.instruction, shard[1]) == shard[0]]
        return records, problems
    batch = read_instructions(source, shard=shard, **instruction_options)
    return batch.records, batch.problems
