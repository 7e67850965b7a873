"""An output folder that holds one run: the record that says which run it is, the decision to resume,
refuse or overwrite it, the lock while a process writes into it, and atomic writes of its files.

Every command that writes a folder (generate, sweep, tune, demo, `toyworld train-base`) asks the same
questions in the same order: is it a file; does it hold anything; is what it holds ours (its record or a
mark file); is it the same run (the identity in its record). Each command keeps its own one-line
refusals (`Refusals`), which its users and the CLI contract tests know.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from steerguide.errors import UserError
from steerguide.files import FolderLock, check_writable, save_image_atomic, write_json_atomic


@dataclass(frozen=True)
class Refusals:
    """A command's refusals; `{out}` is the folder (as `str`), `{record}` the record's path, `{different}`
    the names that differ. A refusal left None is a check the command does not make."""

    file: str | None = None  # the folder is an existing file
    foreign: str | None = None  # it holds something, but no record or mark of ours
    unreadable: str | None = None  # its record is not a JSON object (None: it counts as another run)
    other: str | None = None  # it holds another run (None: any run of ours is continued)


@dataclass
class Decision:
    """What to do with the folder: continue the run of `earlier` (its record), or start afresh and remove
    `replaced` (another run's files, with overwrite) once the new run is sure to start."""

    earlier: dict | None = None
    replaced: list[Path] = field(default_factory=list)


class RunFolder:
    """The folder `path`, whose run is named by the JSON record `record` in it (None: a folder whose runs
    are told apart otherwise, e.g. by keys in its results).

    `marks`: names whose presence also says the folder is ours (an earlier run stopped before its record
    was written); `contents`: the names that make the folder non-empty (None: every entry, hidden ones
    too unless `ignore_hidden`); `what` names the folder in messages (the lock's, `check_writable`'s)."""

    def __init__(
        self,
        path: str | Path,
        record: str | None = "run.json",
        *,
        what: str = "output folder",
        marks: Iterable[str] = (),
        contents: Iterable[str] | None = None,
        ignore_hidden: bool = False,
    ):
        self.path, self.what = Path(path), what
        self.record_path = None if record is None else self.path / record
        self.marks, self.ignore_hidden = tuple(marks), ignore_hidden
        self.contents = None if contents is None else tuple(contents)

    # -- what the folder holds

    def entries(self) -> list[Path]:
        """The entries that make the folder non-empty (none when it is absent)."""
        if not self.path.is_dir():
            return []
        if self.contents is not None:
            return [self.path / name for name in self.contents if (self.path / name).exists()]
        return [p for p in self.path.iterdir() if not (self.ignore_hidden and p.name.startswith("."))]

    def is_ours(self) -> bool:
        has_record = self.record_path is not None and self.record_path.is_file()
        return has_record or any((self.path / name).exists() for name in self.marks)

    def read_record(self) -> dict | None:
        """The record as a dict; None when it is absent; ValueError when it is not a JSON object."""
        if self.record_path is None or not self.record_path.is_file():
            return None
        record = json.loads(self.record_path.read_text())  # a UnicodeDecodeError is a ValueError too
        if not isinstance(record, dict):
            raise ValueError(f"{self.record_path} holds no JSON object")
        return record

    @staticmethod
    def differences(
        earlier: dict, identity: dict, keys: Iterable[str] | None = None, ignore: Iterable[str] = ()
    ) -> list[str]:
        """The identity's names whose value the record differs in (`keys`: those only; None: every name
        of either, less `ignore`)."""
        if keys is not None:
            return [k for k in keys if earlier.get(k) != identity[k]]
        missing = object()
        names = sorted(set(earlier) | set(identity), key=str)
        return [k for k in names if k not in ignore and earlier.get(k, missing) != identity.get(k, missing)]

    # -- the decision

    def decide(
        self,
        refusals: Refusals,
        identity: dict | None = None,
        *,
        keys: Iterable[str] | None = None,
        ignore: Iterable[str] = (),
        overwrite: bool = False,
        files_of: Callable[[dict], list[str]] | None = None,
    ) -> Decision:
        """Resume, refuse (one line, `UserError`) or overwrite, before any work; creates nothing.

        Without `identity` any run of ours is continued (its record is not read). With it, the record must
        hold the same values (`keys`, or all but `ignore`); another run is refused, or with `overwrite`
        replaced: its record and the files `files_of(record)` names go (see `Decision`). A folder that
        passes is then checked to be writable (`files.check_writable`)."""
        decision = self._decide(refusals, identity, keys, ignore, overwrite, files_of)
        check_writable(self.path, self.what)
        return decision

    def _decide(self, refusals, identity, keys, ignore, overwrite, files_of) -> Decision:
        out, record = str(self.path), str(self.record_path)
        if refusals.file is not None and self.path.exists() and not self.path.is_dir():
            raise UserError(refusals.file.format(out=out))
        if not self.entries():
            return Decision()
        if not self.is_ours():
            if refusals.foreign is not None:
                raise UserError(refusals.foreign.format(out=out, record=record))
            return Decision()
        if identity is None:
            return Decision()
        try:
            earlier = self.read_record()
        except ValueError:
            if refusals.unreadable is not None:
                raise UserError(refusals.unreadable.format(out=out, record=record)) from None
            earlier, different = {}, [f"(unreadable {self.record_path.name})"]
        else:
            if earlier is None:  # ours by a mark only: stopped before the record was written
                return Decision()
            different = self.differences(earlier, identity, keys, ignore)
        if not different or refusals.other is None:
            return Decision(earlier)
        if not overwrite:
            raise UserError(refusals.other.format(out=out, record=record, different=", ".join(different)))
        replaced = [self.record_path] + [self.path / name for name in (files_of(earlier) if files_of else [])]
        return Decision(None, replaced)

    # -- writing into it

    def lock(self) -> FolderLock:
        """The lock one writing process holds (`FolderLock.acquire` creates the folder)."""
        return FolderLock(self.path, self.what)

    def write_record(self, record: dict) -> None:
        """The record, whole or not at all: a kill during the write leaves the previous one."""
        assert self.record_path is not None, "this folder has no record"
        write_json_atomic(self.record_path, record)

    def save_image(self, image, name: str) -> Path:
        return save_image_atomic(image, self.path / name)
