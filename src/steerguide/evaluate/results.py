"""The results store: one JSON line per generated image, appended so that a crash never costs more than
the rows in flight.

Why it survives `kill -9` at any moment and several writers at once:
- a batch of rows is appended with ONE `os.write` of complete lines, under an exclusive `flock`, then
  fsync'ed; processes (accelerate ranks, or two runs of the same sweep) never interleave;
- before appending, the writer drops a torn last line (a write cut short by a crash or a full disk), so a
  partial line is never glued to the next row; readers ignore such a line too; any other line that is not
  a row (a hand edit, a damaged disk) is an error naming the file and line, never silently skipped;
- under the same lock the writer first reads what others appended since it last looked, and skips rows
  whose key is already there: the file never holds a key twice, whoever raced;
- images are written to a temporary name and `os.replace`d, so a row only ever points to a whole file.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from pathlib import Path

from steerguide.errors import UserError


def _parse_lines(data: bytes, path: Path, first_line: int = 1) -> tuple[list[dict], int]:
    """Complete result rows of `data` and the number of bytes they span (a torn tail is left out).

    A complete line that is not a result row cannot come from a crash (only the last line can be torn, and
    it has no newline): the file was edited or damaged, and guessing would lose or duplicate rows, so it
    is a `UserError` naming the file and the line."""
    rows = []
    end = data.rfind(b"\n") + 1
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=first_line):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for binary garbage
            raise UserError(
                f"{path} line {number} is not a result row ({type(e).__name__}: {e}); "
                "fix or delete that line (a rerun recomputes a deleted row)"
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("key"), str):
            raise UserError(
                f'{path} line {number} is not a result row (JSON without a "key"); '
                "fix or delete that line (a rerun recomputes a deleted row)"
            )
        rows.append(row)
    return rows, end


class ResultsStore:
    """Append-only JSONL rows keyed by `row["key"]`; see the module docstring for the guarantees."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0
        self._lines = 0  # complete lines before _offset, to name a broken line by its number
        self._keys: set[str] = set()

    def read(self) -> list[dict]:
        """Every complete row, first occurrence of each key, in file order."""
        if not self.path.exists():
            return []
        rows, _ = _parse_lines(self.path.read_bytes(), self.path)
        seen: set[str] = set()
        out = []
        for row in rows:
            if row["key"] not in seen:
                seen.add(row["key"])
                out.append(row)
        return out

    def done_keys(self) -> set[str]:
        """Every key in the file, reading only what was appended since the last call (cheap to poll)."""
        if not self.path.exists():
            return set(self._keys)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # no half-appended batch: appends hold the exclusive lock
            self._catch_up(fd)
        finally:
            os.close(fd)
        return set(self._keys)

    def _catch_up(self, fd: int) -> bytes:
        """Read the complete rows appended since the last look; returns the torn tail, if any."""
        size = os.fstat(fd).st_size
        if size < self._offset:  # the file was replaced or truncated behind our back: rescan it
            self._offset, self._lines, self._keys = 0, 0, set()
        data = os.pread(fd, size - self._offset, self._offset) if size > self._offset else b""
        new_rows, used = _parse_lines(data, self.path, self._lines + 1)
        self._keys.update(r["key"] for r in new_rows)
        self._offset += used
        self._lines += data[:used].count(b"\n")
        return data[used:]

    def append(self, rows: Iterable[dict]) -> int:
        """Append the rows whose keys are not in the file yet; returns how many were written."""
        rows = list(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self._catch_up(fd):  # a torn last line, left by a writer that died mid-write: drop it
                os.ftruncate(fd, self._offset)
            lines = []
            for row in rows:
                if row["key"] in self._keys:
                    continue
                self._keys.add(row["key"])
                lines.append(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            if lines:
                payload = "".join(lines).encode()
                written = os.write(fd, payload)
                if written != len(payload):
                    raise OSError(f"short write to {self.path} ({written} of {len(payload)} bytes)")
                os.fsync(fd)
                self._offset += written
                self._lines += len(lines)
            return len(lines)
        finally:
            os.close(fd)  # closing releases the lock


def remove_stale_temporaries(folder: str | Path, own: bool = False) -> int:
    """Delete the temporary files (`.NAME.PID.tmp*`) that processes which died left in a sweep folder (its
    top level and images/<subject>/); a live process's are kept, except this process's own with `own`
    (its cleanup when interrupted). Returns how many were removed."""
    import re
    import shutil

    removed = 0
    folder = Path(folder)
    for path in [*folder.glob(".*.tmp*"), *folder.glob("images/*/.*.tmp*")]:
        m = re.match(r"^\..+\.(\d+)\.tmp", path.name)
        if not m or (_alive(int(m.group(1))) and not (own and int(m.group(1)) == os.getpid())):
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
