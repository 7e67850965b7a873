"""Row claims: two sweeps into one folder share the work instead of both computing every row.

A process computing a row holds an exclusive `flock` on `OUT/claims/<key>`, a file that also names its pid
for people. Others skip a claimed row and come back to it once their own rows are done: by then it is
in results.jsonl, or its claim is free because its owner died (the kernel drops a dead process's locks,
so a stale claim needs no pid guessing and cannot outlive its owner), and they compute it themselves.

A claim file is deleted only by its lock holder, and only once its row is in results.jsonl (or, at the
end of a sweep, when it is unlocked). Whoever locks a claim file checks that the path still names the
file it locked and, after locking, that the row is not done: so a row is never computed twice even when
a claim file is deleted under a process that just opened it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class RowClaims:
    """The claims this process holds under `folder` (OUT/claims)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._held: dict[str, int] = {}  # key -> fd of its locked claim file

    def path(self, key: str) -> Path:
        return self.folder / key

    def try_claim(self, key: str) -> bool:
        """Lock the claim of `key` without waiting; False when another process holds it."""
        if key in self._held:
            return True
        fd = try_lock(self.path(key))
        if fd is None:
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._held[key] = fd
        return True

    def owner(self, key: str) -> str:
        """The pid written in a claim file (for messages); "?" when unreadable."""
        try:
            return self.path(key).read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self, key: str, done: bool) -> None:
        """Give up the claim of `key`; delete its file when the row is done (in results.jsonl)."""
        fd = self._held.pop(key, None)
        if fd is None:
            return
        if done:
            with contextlib.suppress(FileNotFoundError):
                self.path(key).unlink()
        os.close(fd)  # closing drops the lock

    def release_all(self) -> None:
        """Drop every claim this process holds, keeping the files (their rows are not done): what an
        interrupted sweep leaves for the next run to take over."""
        for key in list(self._held):
            self.release(key, done=False)

    def remove_unused(self) -> int:
        """Delete claim files nobody holds (left by interrupted or killed sweeps); the folder too when it
        ends up empty. Returns how many were deleted."""
        removed = 0
        if not self.folder.is_dir():
            return 0
        for path in self.folder.iterdir():
            if path.name in self._held or path.name.startswith("."):
                continue
            fd = try_lock(path)
            if fd is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
            os.close(fd)
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when empty
        return removed


def try_lock(path: Path) -> int | None:
    """Open `path` (created if missing) and take its exclusive lock without waiting: the fd, or None when
    another process holds it. Retries when the file was deleted or replaced between open and lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file that was deleted meanwhile: lock the one now at the path


@contextlib.contextmanager
def exclusive(path: str | Path, on_wait=None):
    """Hold an exclusive lock on `path` for the block, waiting for other holders (`on_wait()` is called
    once when that happens, to say so)."""
    path = Path(path)
    fd = try_lock(path)
    if fd is None and on_wait is not None:
        on_wait()
    while fd is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # wait
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # deleted while we waited: lock the file now at the path
            os.close(fd)
            fd = None
    try:
        yield
    finally:
        os.close(fd)
