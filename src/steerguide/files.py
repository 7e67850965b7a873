"""Writing results so that a reader (or a rerun after a crash) never sees half a file, and recording
what produced them.

Temporary files are named `.NAME.PID.tmp…` in the target's folder, so that `os.replace` is atomic and a
cleanup can tell the leftovers of dead processes from the files of live ones.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from steerguide.errors import UserError


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_json_atomic(path: str | Path, data) -> None:
    """Write JSON to `path` whole or not at all (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def save_image_atomic(image, path: str | Path) -> Path:
    """Write a PIL image so that `path` is either absent or complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    image.save(tmp)
    os.replace(tmp, path)
    return path


def check_writable(out: str | Path, what: str = "output folder") -> Path:
    """Check, before any work, that the folder `out` can be written (created if absent) and leave no trace:
    the nearest existing folder on the way gets a probe file, then loses it. One line if not."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} is not writable: it is a file")
    probe_in = out
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise UserError(f"{what} {out} is not writable: {probe_in} is a file")
    try:
        fd, probe = tempfile.mkstemp(dir=probe_in, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{what} {out} is not writable ({e.strerror or e})") from None
    return out


def check_writable_file(path: str | Path, what: str = "output file", replace: bool = True) -> Path:
    """Check that the file `path` can be written (its folder via `check_writable`): not a folder, and not
    an existing file unless `replace`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not replace:
        raise UserError(f"{what} {path} exists; give a new name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} is not writable")
    check_writable(path.parent, f"folder of the {what}")
    return path


def versions() -> dict[str, str]:
    """The versions of steerguide and the libraries it builds on, for run records."""
    import accelerate
    import diffusers
    import peft
    import torch
    import transformers

    from steerguide._version import __version__

    return {
        "steerguide": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


LOCK_NAME = ".steerguide.lock"


class FolderLock:
    """An exclusive lock on an output folder while one command writes into it (`flock` on a hidden file,
    released by the kernel when the process dies, so a killed run never leaves the folder locked).

    `acquire()` creates the folder if needed and raises `UserError` at once when another process holds it;
    `release()` removes the lock file."""

    def __init__(self, folder: str | Path, what: str):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise UserError(
                    f"{self.what} {self.folder} is being written by another steerguide process (pid {holder}); "
                    "wait for it to finish, or give another folder"
                ) from None
            try:  # the holder before us may have removed the file we opened: lock the one that is there
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: a waiter re-checks the inode
        finally:
            os.close(self.fd)
            self.fd = None


def read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """`prompts` and then the lines of `prompts_file` (blank lines and # comments skipped); one line
    naming the problem when none is left or the file cannot be read as text."""
    found = list(prompts)
    if prompts_file is not None:
        try:
            lines = prompts_file.read_text(encoding="utf-8-sig").splitlines()  # a BOM is no prompt text
        except OSError as e:
            raise UserError(f"cannot read prompts file {prompts_file}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise UserError(
                f"prompts file {prompts_file} is not UTF-8 text (byte {e.start}); give one prompt per line"
            ) from None
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not found:
            raise UserError(f"prompts file {prompts_file} holds no prompt (only blank lines or # comments)")
    if not found:
        raise UserError("no prompt given: use --prompt TEXT (repeatable) or --prompts-file FILE")
    return found
