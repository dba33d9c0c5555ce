"""The run directory: its layout, its lock, and the one place it is read and written.

    DIR/records.jsonl   one row per instruction: every field of every stage
    DIR/pairs.jsonl     chosen/rejected rows (TRL's DPO format), once the pair stage ran
    DIR/errors.jsonl    input rows and requests that failed, with reasons
    DIR/run.json        the config, the judges and the summary (written atomically)
    DIR/cache/          one request cache per stage unit, `<unit name>.jsonl` (store.py)
    DIR/.lock           held by the run writing DIR; a second run on DIR says who holds it

`edgepref run`, `merge`, `export`, `inspect` and `report` go through `RunDir`; no other module
spells these names.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import EdgeprefError, InputError
from .inputs import iter_jsonl_rows, read_records
from .records import Record
from .store import read_jsonl, write_jsonl_atomic, write_text_atomic

RECORDS, PAIRS, ERRORS, RUN, CACHE, LOCK = "records.jsonl", "pairs.jsonl", "errors.jsonl", "run.json", "cache", ".lock"
PAIR_FIELDS = {"prompt", "chosen", "rejected"}


class RunDirInUse(EdgeprefError):
    pass


class RunDir:
    """One output directory of a run (or of a merge)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

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
    def cache_dir(self) -> Path:
        return self.path / CACHE

    def exists(self) -> bool:
        return any(f.is_file() for f in (self.run_file, self.records_file, self.pairs_file))

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
        named = {k: str(v) for k, v in files.items()}
        if run is not None:
            self.write_run(run, named)
        return named

    def write_run(self, run: dict, files: dict[str, str] | None = None) -> None:
        if files is not None and isinstance(run.get("summary"), dict):
            run["summary"]["files"] = files
        write_text_atomic(self.run_file, json.dumps(run, indent=2, default=str))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold DIR/.lock while a run writes DIR; a second run stops at once and says who holds it.
        The lock is the operating system's (flock): it goes with the process, a crash included."""
        try:
            import fcntl
        except ImportError:  # no flock here (Windows): runs are not guarded
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / LOCK, "a+", encoding="utf-8")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
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
            return json.loads(self.run_file.read_text(encoding="utf-8")), None
        except (ValueError, UnicodeDecodeError) as exc:
            return {}, f"{RUN} is not readable JSON ({exc})"

    def read_records(self) -> tuple[list[Record], list[str]]:
        """The records and a line per row left out."""
        records, bad = read_records(self.records_file)
        return records, [f"{RECORDS} line {p.row}: {p.reason} (left out)" for p in bad]

    def record_rows(self) -> Iterator[dict]:
        return read_jsonl(self.records_file)

    def error_rows(self) -> Iterator[dict]:
        return read_jsonl(self.errors_file)

    def read_pairs(self, file: Path | None = None) -> tuple[list[dict], list[str]]:
        """The pairs (of DIR, or of a pairs file) and a line per row that is not one."""
        file = file or self.pairs_file
        pairs, problems = [], []
        for n, row, problem in iter_jsonl_rows(file):
            if problem or not PAIR_FIELDS <= set(row):
                problems.append(f"{file.name} line {n}: {problem or 'not a pair'} (left out)")
            else:
                pairs.append(row)
        return pairs, problems


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
