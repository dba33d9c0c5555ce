"""The run directory: its layout, its lock, and the one place it is read and written.

    DIR/records.jsonl   one row per instruction: every field of every stage
    DIR/pairs.jsonl     chosen/rejected rows (TRL's DPO format), once the pair stage ran
    DIR/errors.jsonl    input rows and requests that failed, with reasons
    DIR/run.json        the marker, the config, the judges, the input and the summary (atomic)
    DIR/cache/          one request cache per stage unit, `<unit name>.jsonl` (store.py)
    DIR/.lock           held by the run writing DIR; a second run on DIR says who holds it
    DIR/report.html     `edgepref report` / `run --report`
    DIR/review.jsonl    a person's decisions on the pairs (`edgepref review`; review.py), never
                        removed by a run
    DIR/pairs.reviewed.jsonl  the pairs with those decisions applied, written again by every run

`edgepref run`, `merge`, `export`, `inspect` and `report` go through `RunDir`; no other module
spells these names.

What a run may write over (the user's files are never among them):
  - DIR is a run directory when its run.json carries the marker `"edgepref": {"run_layout": ...}`
    (every run.json RunDir writes has it). The CLI's --out must be absent, empty (a lone .lock of
    a run stopped before it wrote run.json counts as empty) or a run directory; the Python API
    also writes into another directory when it holds none of the names above
    (`check_writable`).
  - No input may live at or under one of the names above inside DIR (`refuse_inputs_inside`).
  - A run on a run directory made with other settings or another input stops and says what
    changed (unless the earlier run did no work: no records, no pairs, no cached answer); with
    `overwrite` the old records, pairs, errors and report are removed first and the request cache stays (it is keyed by the settings, so only answers that still apply are
    replayed). Settings of how a run runs (threads, slots, offload, endpoints) are not changes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

try:
    import fcntl
except ImportError:  # no flock (Windows): runs are not guarded by a lock
    fcntl = None

from ..core.checks import fits
from ..core.errors import ConfigError, EdgeprefError, InputError
from .inputs import iter_jsonl_rows, read_records
from .review import Matched, match_review, review_counts, write_reviewed
from ..core.records import Record
from ..core.files import write_jsonl_atomic, write_text_atomic

RECORDS, PAIRS, ERRORS, RUN, CACHE, LOCK = "records.jsonl", "pairs.jsonl", "errors.jsonl", "run.json", "cache", ".lock"
REPORT, REVIEW, REVIEWED = "report.html", "review.jsonl", "pairs.reviewed.jsonl"
OUTPUTS = (RECORDS, PAIRS, ERRORS, RUN, CACHE, LOCK, REPORT, REVIEW, REVIEWED)  # every name edgepref writes in DIR
PAIR_FIELDS = ("prompt", "chosen", "rejected")  # a pair's texts
MARKER, LAYOUT = "edgepref", 1  # run.json's {"edgepref": {"run_layout": 1}}: DIR is a run directory
# Settings of how a run runs, not of what it asks: a rerun that changes only these resumes.
HOW_NOT_WHAT = ("engine.threads", "engine.gpu_layers", "engine.slots", "engine.prompt_block", "engine.read_block",
                "engine.split_reads",
                "models.*.endpoints", "models.*.max_in_flight", "models.*.api_key_env", "models.*.timeout")


class RunDirInUse(EdgeprefError):
    pass


class NotARunDir(InputError):
    """--out names a directory that holds someone else's files, or an input is among the outputs."""


class SettingsChanged(ConfigError):
    """--out holds a run made with other settings or another input."""


class RunDir:
    """One output directory of a run (or of a merge)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.review: dict | None = None  # the review's counts, once `write` applied one

    @property
    def records_file(self) -> Path:
        return self.path / RECORDS

    @property
    def pairs_file(self) -> Path:
        return self.path / PAIRS

    @property
    def errors_file(self) -> Path:
        return self.path / ERRORS

    @property
    def run_file(self) -> Path:
        return self.path / RUN

    @property
    def review_file(self) -> Path:
        return self.path / REVIEW

    @property
    def reviewed_file(self) -> Path:
        return self.path / REVIEWED

    @property
    def cache_dir(self) -> Path:
        return self.path / CACHE

    def exists(self) -> bool:
        return any(f.is_file() for f in (self.run_file, self.records_file, self.pairs_file))

    def is_run_dir(self) -> bool:
        """Whether DIR's run.json was written by edgepref (it carries the marker)."""
        run, problem = self.read_run()
        return problem is None and isinstance(run, dict) and isinstance(run.get(MARKER), dict)

    # ------------------------------------------------------------ what may be written over

    def check_writable(self, require_empty: bool = False) -> None:
        """Refuse a DIR that is a file, or a directory that is not a run directory and holds a
        file of the user's that a run would write over (a name in OUTPUTS). With `require_empty`
        (the CLI's --out) such a directory must be empty: the outputs are not mixed into it.
        Writes nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise NotARunDir(f"--out {self.path} is a file, not a directory", "pass a new directory to --out")
        if not self.path.is_dir() or self.is_run_dir():
            return
        entries = sorted(e.name for e in self.path.iterdir() if e.name != LOCK)
        clashes = [e for e in entries if e in OUTPUTS]
        if clashes or (require_empty and entries):
            listed = clashes or entries
            shown = ", ".join(listed[:4]) + (f" and {len(listed) - 4} more" if len(listed) > 4 else "")
            raise NotARunDir(
                f"--out {self.path} is not empty ({shown}) and is not an edgepref run directory "
                f"(no {RUN} written by edgepref)",
                f"pass a new or empty directory to --out: a run writes {', '.join(OUTPUTS[:5])} there",
            )

    def begin(self, header: dict, overwrite: bool = False) -> None:
        """Start a run in DIR (hold the lock): compare `header` (config, judges, input) with the run
        DIR holds; the same, or nothing there: resume. Changed: raise SettingsChanged unless
        `overwrite`, which removes the old run's outputs (not its request cache, nor a person's
        review: its decisions hold only for pairs whose texts are unchanged). Then write
        run.json, so that DIR is a run directory from its first request on."""
        old, problem = self.read_run()
        # a run that stopped before its first answer (a server down, a model that would not
        # load) left run.json and nothing else: the next command starts afresh, whatever it asks
        worked = self.did_work() or "merged_from" in old
        changes = run_changes(old, header) if old and worked else []
        problem = problem if worked else None
        if problem and not overwrite:
            raise SettingsChanged(f"{self.path}: {problem}", "pass --overwrite to start the run in it again")
        if changes and not overwrite:
            more = f"; and {len(changes) - 6} more" if len(changes) > 6 else ""
            raise SettingsChanged(
                f"{self.path} holds a run made with other settings: {'; '.join(changes[:6])}{more}",
                "run it with the settings it was made with to resume it; pass --overwrite to replace its "
                "pairs with a run on the new settings (cached answers that still apply are reused); "
                "or pass another --out",
            )
        if changes or problem:
            for name in (RECORDS, PAIRS, ERRORS, REPORT, REVIEWED):
                (self.path / name).unlink(missing_ok=True)
        self.write_run(dict(header))

    def did_work(self) -> bool:
        """Whether a run in DIR got anywhere: records or pairs written, or an answer in its request cache."""
        if self.records_file.is_file() or self.pairs_file.is_file():
            return True
        return self.cache_dir.is_dir() and any(f.is_file() and f.stat().st_size for f in self.cache_dir.iterdir())

    # ------------------------------------------------------------ writing

    def write(self, records: Iterable[dict], errors: Iterable[dict], pairs: Iterable[dict] | None,
              run: dict | None = None) -> dict[str, str]:
        """Records, errors and (when given) pairs, each file atomically; then run.json with
        `files` naming them. Returns the files written by kind."""
        self.path.mkdir(parents=True, exist_ok=True)
        files = {"records": self.records_file, "errors": self.errors_file}
        write_jsonl_atomic(files["records"], records)
        write_jsonl_atomic(files["errors"], errors)
        if pairs is not None:
            files["pairs"] = self.pairs_file
            write_jsonl_atomic(files["pairs"], pairs)
            reviewed = self.refresh_review()
            if reviewed is not None:
                self.review = review_counts(*reviewed[:2])
                files["reviewed"] = self.reviewed_file
        named = {k: str(v) for k, v in files.items()}
        if run is not None:
            if self.review is not None and isinstance(run.get("summary"), dict):
                run["summary"]["review"] = self.review
            self.write_run(run, named)
        return named

    def read_review(self) -> tuple[list[dict], Matched, list[str]]:
        """The pairs, a person's decisions on them (review.jsonl) matched to their texts, and the
        lines of either file left out."""
        pairs, problems = self.read_pairs()
        matched, bad = match_review(pairs, self.review_file)
        return pairs, matched, problems + bad

    def refresh_review(self) -> tuple[list[dict], Matched, list[str]] | None:
        """pairs.reviewed.jsonl again from pairs.jsonl and review.jsonl, when a person reviewed:
        the decisions that still match their pair's texts applied. Returns what `read_review`
        read, or None when there is no review."""
        if not self.review_file.is_file():
            return None
        reviewed = self.read_review()
        write_reviewed(self.reviewed_file, *reviewed[:2])
        return reviewed

    def write_run(self, run: dict, files: dict[str, str] | None = None) -> None:
        """run.json, marked as edgepref's (MARKER first), with `files` in its summary."""
        if files is not None and isinstance(run.get("summary"), dict):
            run["summary"]["files"] = files
        run = {MARKER: {"run_layout": LAYOUT}, **{k: v for k, v in run.items() if k != MARKER}}
        write_text_atomic(self.run_file, json.dumps(run, indent=2, default=str))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold DIR/.lock while a run writes DIR; a second run stops at once and says who holds it.
        The lock is the operating system's (flock): it goes with the process, a crash included."""
        if fcntl is None:  # no flock here (Windows): runs are not guarded
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / LOCK, "a+", encoding="utf-8")
        try:
            holder = _take_lock(fh)
            if holder is not None:
                raise RunDirInUse(f"{self.path} is in use by another edgepref run ({holder})",
                                  "wait for that run to finish (rerunning it then resumes), or pass another --out")
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            fh.flush()
            yield
        finally:
            fh.close()  # closing releases the lock

    # ------------------------------------------------------------ reading

    def read_run(self) -> tuple[dict, str | None]:
        """run.json, or {} and why it could not be read (None: read, or not there yet)."""
        if not self.run_file.is_file():
            return {}, None
        try:
            run = json.loads(self.run_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return {}, f"{RUN} is not readable JSON ({exc})"
        except OSError as exc:
            return {}, f"{RUN} cannot be read ({exc.strerror or exc})"
        if not isinstance(run, dict):
            return {}, f"{RUN} is a JSON {type(run).__name__}, not an object"
        return run, None

    def read_records(self) -> tuple[list[Record], list[str]]:
        """The records and a line per row left out."""
        records, bad = read_records(self.records_file)
        return records, [f"{RECORDS} line {p.row}: {p.reason} (left out)" for p in bad]

    def read_pairs(self, file: Path | None = None) -> tuple[list[dict], list[str]]:
        """The pairs (of DIR, or of a pairs file) and a line per row that is not one (its file
        and line number, and why: not UTF-8, not JSON, not an object, `pair_problem`)."""
        file = file or self.pairs_file
        pairs, problems = [], []
        for n, row, problem in iter_jsonl_rows(file):
            problem = problem or pair_problem(row)
            if problem:
                problems.append(f"{file.name} line {n}: {problem} (left out)")
            else:
                pairs.append(row)
        return pairs, problems

    def read_rows(self, file: Path, need_id: bool = True) -> tuple[list[dict], list[str]]:
        """The rows of one of DIR's JSONL files (records, errors) and a line per row left out:
        not UTF-8, not JSON, not an object, or (`need_id`) without a string id."""
        rows, problems = [], []
        if not file.is_file():
            return rows, problems
        for n, row, problem in iter_jsonl_rows(file):
            if problem is None and need_id and not (isinstance(row.get("id"), str) and row["id"]):
                problem = "no id (a non-empty string)"
            if problem:
                problems.append(f"{file.name} line {n}: {problem} (left out)")
            else:
                rows.append(row)
        return rows, problems

    def lock_holder(self) -> str | None:
        """Who holds DIR's lock (a run writing DIR), or None when nobody does."""
        lock = self.path / LOCK
        if fcntl is None or not lock.is_file():
            return None
        with open(lock, "a+", encoding="utf-8") as fh:
            holder = _take_lock(fh)
            if holder is None:
                fcntl.flock(fh, fcntl.LOCK_UN)
            return holder


def _take_lock(fh) -> str | None:
    """flock DIR/.lock (open as `fh`) without waiting: None when taken, else who holds it."""
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        return fh.read().strip() or "another process"
    return None


# the fields of a pairs row that edgepref reads besides its texts: absent, null, or of this type
PAIR_PROVENANCE = {
    **{k: str for k in ("id", "model_chosen", "model_rejected", "rationale_chosen", "rationale_rejected",
                        "completion_chosen", "completion_rejected", "decided_by", "reviewed")},
    **{k: float for k in ("score_chosen", "score_rejected", "margin", "confidence", "agreement")},
}


def _number(v) -> bool:
    return fits(v, float)


def _counts(v) -> bool:
    return fits(v, dict[str, float])


# what the readers of run.json (the report, export's card) take from it: key -> check, where
# absent or null is always allowed
RUN_JSON_SHAPE = {
    "config": lambda v: isinstance(v, dict) and all(fits(v.get(t), dict | None)
                                                     for t in ("evolve", "judge", "pair", "engine", "models"))
    and fits(v.get("pool"), list[dict] | None),
    "judges": lambda v: fits(v, list[str]),
    "input": lambda v: isinstance(v, dict),
    "summary": lambda v: isinstance(v, dict) and all(
        v.get(k) is None or check(v[k]) for k, check in RUN_SUMMARY_SHAPE.items()),
}
RUN_SUMMARY_SHAPE = {
    **{k: _number for k in ("instructions", "pairs", "expected_agreement", "target_agreement", "risk",
                            "coverage", "wall_seconds", "mean_margin", "mean_confidence")},
    **{k: _counts for k in ("completions_per_model", "pairs_dropped", "decided_by")},
    "verdict_chain": lambda v: fits(v, str),
    # the counters the report's stage table reads from each stage unit
    "stages": lambda v: isinstance(v, dict) and all(isinstance(st, dict) and all(
        st.get(k) is None or _number(st[k])
        for k in ("seconds", "completion_tokens", "continued_tokens", "prompt_decoded", "prompt_cached"))
        for st in v.values()),
}


def run_json_problem(run: dict) -> str | None:
    """Why run.json (read back) does not have the shape edgepref wrote, or None."""
    for key, check in RUN_JSON_SHAPE.items():
        if run.get(key) is not None and not check(run[key]):
            return f"{RUN}'s {key} is not what edgepref writes"
    return None


def _is_text_or_messages(value: object) -> bool:
    if isinstance(value, str):
        return True
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value))


def pair_problem(row: dict) -> str | None:
    """Why a row read back from a pairs file is not a pair edgepref wrote, or None: prompt,
    chosen and rejected are text, or lists of {role, content} messages; an id is a string."""
    missing = [k for k in PAIR_FIELDS if k not in row]
    if missing:
        return f"not a pair (no {', '.join(missing)})"
    for key in PAIR_FIELDS:
        if not _is_text_or_messages(row[key]):
            return f"{key} is {type(row[key]).__name__ if row[key] is not None else 'null'}, not text or a message list"
    for key, hint in PAIR_PROVENANCE.items():
        if not fits(row.get(key), hint | None):
            return f"{key} is {type(row[key]).__name__}, not {'a string' if hint is str else 'a number'}"
    return None


def pairs_source(path: str | Path) -> tuple[RunDir, Path]:
    """A run directory or a pairs file named on the command line: its RunDir and pairs file."""
    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        if not run.pairs_file.is_file():
            raise InputError(f"{path} has no {PAIRS}", f"run the pipeline first: edgepref run INPUT --out {path}")
        return run, run.pairs_file
    if path.is_file():
        return RunDir(path.parent), path
    raise InputError(f"not found: {path}", f"pass an output directory or a {PAIRS} file")


# ---------------------------------------------------------------- outputs and inputs


def refuse_inputs_inside(out: str | Path, inputs: Iterable[str | Path], flag: str = "--out",
                         written: Iterable[str | Path] | None = None) -> None:
    """Refuse an input that is `out` itself or lies at or under a path the command writes:
    `written`, by default the names in OUTPUTS inside the run directory `out`. It would overwrite
    what it reads. Inputs that are not local paths (a Hub dataset name) are skipped. Writes
    nothing."""
    out_path = Path(out).resolve()
    targets = [Path(w).resolve() for w in written] if written is not None else [out_path / n for n in OUTPUTS]
    for given in inputs:
        path = Path(given)
        if not path.exists():
            continue
        real = path.resolve()
        if real == out_path:
            raise NotARunDir(f"{flag} {out} is one of the inputs", f"write to a new {'directory' if real.is_dir() else 'file'}")
        hit = next((w for w in targets if real == w or w in real.parents), None)
        if hit is not None:
            raise NotARunDir(
                f"the input {given} is inside {flag} {out}, where edgepref writes {hit.name}: "
                "the run would overwrite what it reads",
                f"move the input out of {out}, or pass another {flag}",
            )


def input_identity(source: str | Path, *, column: str, split: str | None = None, limit: int | None = None,
                   shuffle: bool = False) -> dict:
    """What a run read, for run.json's "input": a local file or dataset directory by its path and
    the sha256 of its bytes, a Hub dataset by name, split and the revision in the local cache
    (None when not found), and the options that chose its rows. Two runs read the same input when
    `input_key` of both is equal: the path is shown, not compared (shards on other machines)."""
    path = Path(source)
    if path.is_file() or path.is_dir():
        ident = {"path": str(path.resolve()), "sha256": _sha256_of(path)}
    else:
        ident = {"dataset": str(source), "split": split or "train", "revision": _hub_revision(str(source))}
    return {**ident, "column": column, "limit": limit, "shuffle": shuffle}


def texts_identity(texts: list[str]) -> dict:
    """The "input" of a run over instruction strings given directly (`try`, the Python API)."""
    digest = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()
    return {"instructions": len(texts), "sha256": digest}


def input_key(identity: dict) -> dict:
    return {k: v for k, v in identity.items() if k != "path"}


def describe_input(identity: dict | None) -> str:
    if not identity:
        return "unknown"
    where = identity.get("path") or identity.get("dataset") or f"{identity.get('instructions')} instructions"
    version = identity.get("sha256") or identity.get("revision") or "revision unknown"
    chosen = ", ".join(f"{k} {identity[k]}" for k in ("split", "column", "limit", "shuffle") if identity.get(k))
    return f"{where} ({str(version)[:12]}{', ' + chosen if chosen else ''})"


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for each setting that differs (lists of equal length item by item),
    leaving out HOW_NOT_WHAT."""
    key = prefix.rstrip(".")
    if any(fnmatch.fnmatchcase(key, pattern) for pattern in HOW_NOT_WHAT):
        return []
    out: list[str] = []
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            out += config_changes(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and old != new:
        for i, (a, b) in enumerate(zip(old, new)):
            out += config_changes(a, b, f"{prefix.rstrip('.')}[{i}].")
        return out
    if old != new:
        out.append(f"{key}: {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}")
    return out


def run_changes(old: dict, new: dict) -> list[str]:
    """What differs between two runs' run.json headers: settings, judges, input (an input is
    compared only when both runs recorded one)."""
    as_json = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731 - tuples and floats as run.json has them
    changes = config_changes(as_json(old.get("config") or {}), as_json(new.get("config") or {}))
    if old.get("judges") is not None and as_json(old.get("judges")) != as_json(new.get("judges")):
        changes.append(f"judges: {json.dumps(old.get('judges'))} -> {json.dumps(new.get('judges'))}")
    if old.get("merged_from") and not new.get("merged_from"):
        changes.append(f"the merge of {len(old['merged_from'])} runs -> a run")
    a, b = old.get("input"), new.get("input")
    if a and b and input_key(a) != input_key(b):
        changes.append(f"input: {describe_input(a)} -> {describe_input(b)}")
    return changes


def _sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and bytes, in name order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f is not path:
            digest.update(f.relative_to(path).as_posix().encode("utf-8") + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _hub_revision(name: str) -> str | None:
    """The commit of a Hub dataset in the local Hugging Face cache (refs/main), if there is one."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
