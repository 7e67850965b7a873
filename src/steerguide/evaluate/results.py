"""The results store: one JSON line per generated image, appended so that a crash never costs more than
the rows in flight.

Why it survives `kill -9` at any moment and several writers at once:
- a batch of rows is appended with ONE `os.write` of complete lines, under an exclusive `flock`, then
  fsync'ed; processes (accelerate ranks, or two runs of the same sweep) never interleave;
- before appending, the writer drops a torn last line (a write cut short by a crash or a full disk), so a
  partial line is never glued to the next row; readers ignore such a line too;
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


def _parse_lines(data: bytes) -> tuple[list[dict], int]:
    """Complete, valid JSON lines of `data` and the number of bytes they span (a torn tail is left out)."""
    rows = []
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # only a hand-edited file gets here; a crash can only tear the last line
        if isinstance(row, dict) and "key" in row:
            rows.append(row)
    return rows, end


class ResultsStore:
    """Append-only JSONL rows keyed by `row["key"]`; see the module docstring for the guarantees."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0
        self._keys: set[str] = set()

    def read(self) -> list[dict]:
        """Every complete row, first occurrence of each key, in file order."""
        if not self.path.exists():
            return []
        rows, _ = _parse_lines(self.path.read_bytes())
        seen: set[str] = set()
        out = []
        for row in rows:
            if row["key"] not in seen:
                seen.add(row["key"])
                out.append(row)
        return out

    def done_keys(self) -> set[str]:
        return {row["key"] for row in self.read()}

    def append(self, rows: Iterable[dict]) -> int:
        """Append the rows whose keys are not in the file yet; returns how many were written."""
        rows = list(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size < self._offset:  # the file was replaced or truncated behind our back: rescan it
                self._offset, self._keys = 0, set()
            data = os.pread(fd, size - self._offset, self._offset) if size > self._offset else b""
            new_rows, used = _parse_lines(data)
            self._keys.update(r["key"] for r in new_rows)
            if used < len(data):  # a torn last line, left by a writer that died mid-write: drop it
                os.ftruncate(fd, self._offset + used)
            self._offset += used
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
            return len(lines)
        finally:
            os.close(fd)  # closing releases the lock


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporary files (`.NAME.PID.tmp*`) that processes which died left in a sweep folder (its
    top level and images/<subject>/); a live process's are kept. Returns how many were removed."""
    import re
    import shutil

    removed = 0
    folder = Path(folder)
    for path in [*folder.glob(".*.tmp*"), *folder.glob("images/*/.*.tmp*")]:
        m = re.match(r"^\..+\.(\d+)\.tmp", path.name)
        if not m or _alive(int(m.group(1))):
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
