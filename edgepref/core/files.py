"""Files that survive a crash: append-only JSONL with torn-tail repair, atomic writes, and
full-disk errors that name the file. The request cache (backends/cache.py), the run directory
(data/rundir.py), exports and calibrations write through here.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import EdgeprefError


@contextmanager
def disk_errors(path: Path):
    """A full disk (or quota) while writing `path` becomes an error that names the file and the
    free space, and says that a rerun resumes."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        try:
            free = f"{shutil.disk_usage(Path(path).parent).free / 1e6:.1f} MB free"
        except OSError:
            free = "free space unknown"
        raise EdgeprefError(f"no space left on the device while writing {path} ({free})",
                            "free some space and rerun the same command: it resumes where it stopped") from exc


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (an interrupted write); returns bytes removed."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
        # walk back to the previous newline
        pos = size - 1
        chunk = 4096
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            data = fh.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        fh.truncate(keep)
        return size - keep


def read_jsonl(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSONL file; a torn last line is skipped (call repair_torn_tail
    before appending), and so is a line damaged on disk (not UTF-8, not JSON, not an object)."""
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            try:
                line = raw.decode("utf-8").strip()
                row = json.loads(line) if line else None
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue  # a line damaged on disk: its request is simply redone
            if isinstance(row, dict):
                yield row


class JsonlAppender:
    """Appends one JSON row per line and flushes each, so a crash loses at most the row in flight."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def append(self, row: dict) -> None:
        with disk_errors(self.path):
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            with disk_errors(self.path):
                self._fh.flush()
                os.fsync(self._fh.fileno())
        finally:
            try:
                self._fh.close()
            except OSError:
                pass  # only when the flush above failed: that error is the one raised

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_atomic(path: Path, chunks: Iterable[str]) -> int:
    """Write the chunks to a temp file and rename it over `path`: readers never see half a file.
    Returns the number of chunks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    n = 0
    try:
        with disk_errors(path), open(tmp, "w", encoding="utf-8") as fh:
            for chunk in chunks:
                fh.write(chunk)
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # the old file stays whole; no half-written temp is left
        raise
    os.replace(tmp, path)
    return n


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> int:
    """All rows, one JSON object a line, written atomically; returns the number of rows."""
    return _write_atomic(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, [text])
