"""The run-folder object: resume the same run, refuse another (or a folder not ours), overwrite on request,
and a record written whole or not at all."""

from __future__ import annotations

import json
import pathlib

import pytest

from steerguide.errors import UserError
from steerguide.run_folder import Decision, Refusals, RunFolder

REFUSALS = Refusals(
    file="{out} is a file",
    foreign="{out} is not ours",
    other="{out} holds another run (different {different})",
)
IDENTITY = {"prompt": "a dog", "seed": 3, "steps": 20}
KEYS = ("prompt", "seed", "steps")


def made(tmp_path, record: dict | None = None, files: tuple[str, ...] = ()) -> pathlib.Path:
    out = tmp_path / "out"
    out.mkdir()
    if record is not None:
        (out / "run.json").write_text(json.dumps(record))
    for name in files:
        (out / name).write_text("x")
    return out


def test_the_same_run_is_resumed_with_its_record(tmp_path):
    record = {**IDENTITY, "images": [{"file": "a.png"}], "complete": False}
    out = made(tmp_path, record, ("a.png",))
    decision = RunFolder(out).decide(REFUSALS, IDENTITY, keys=KEYS)
    assert decision == Decision(record, [])
    # names outside the identity (what the run has made so far) do not stop a resume
    assert RunFolder(out).decide(REFUSALS, {**IDENTITY}, keys=("seed",)).earlier == record


def test_a_new_or_empty_folder_starts_afresh_and_nothing_is_made(tmp_path):
    assert RunFolder(tmp_path / "absent").decide(REFUSALS, IDENTITY, keys=KEYS) == Decision()
    assert not (tmp_path / "absent").exists()
    out = made(tmp_path)
    (out / ".lock").write_text("")
    assert RunFolder(out, ignore_hidden=True).decide(REFUSALS, IDENTITY, keys=KEYS) == Decision()
    with pytest.raises(UserError, match="is not ours"):  # a hidden file counts unless told otherwise
        RunFolder(out).decide(REFUSALS, IDENTITY, keys=KEYS)


def test_another_run_a_foreign_folder_and_a_file_are_refused_in_one_line(tmp_path):
    out = made(tmp_path, {**IDENTITY, "seed": 4, "steps": 30}, ("a.png",))
    with pytest.raises(UserError) as refused:
        RunFolder(out).decide(REFUSALS, IDENTITY, keys=KEYS)
    assert str(refused.value) == f"{out} holds another run (different seed, steps)"
    assert (out / "run.json").is_file() and (out / "a.png").is_file()  # refusing removes nothing

    (out / "run.json").write_text("{not json")
    with pytest.raises(UserError, match=r"different \(unreadable run.json\)"):
        RunFolder(out).decide(REFUSALS, IDENTITY, keys=KEYS)
    with pytest.raises(UserError, match="^bad record .*run.json$"):
        RunFolder(out).decide(Refusals(unreadable="bad record {record}"), IDENTITY, keys=KEYS)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="^.*foreign is not ours$"):
        RunFolder(foreign).decide(REFUSALS, IDENTITY, keys=KEYS)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="a-file is a file$"):
        RunFolder(tmp_path / "a-file").decide(REFUSALS, IDENTITY, keys=KEYS)


def test_overwrite_names_the_other_runs_files_and_removes_none_yet(tmp_path):
    record = {**IDENTITY, "seed": 4, "images": ["a.png", "b.png"]}
    out = made(tmp_path, record, ("a.png", "b.png", "mine.txt"))
    decision = RunFolder(out).decide(
        REFUSALS, IDENTITY, keys=KEYS, overwrite=True, files_of=lambda record: record["images"]
    )
    assert decision.earlier is None
    assert decision.replaced == [out / "run.json", out / "a.png", out / "b.png"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "mine.txt", "run.json"]
    # the same run is resumed even with overwrite: nothing of it is replaced
    same = RunFolder(out).decide(REFUSALS, {**IDENTITY, "seed": 4}, keys=KEYS, overwrite=True)
    assert same.replaced == [] and same.earlier["seed"] == 4


def test_marks_make_a_folder_ours_and_without_identity_it_is_continued(tmp_path):
    out = made(tmp_path, files=("probes.jsonl", "other.txt"))
    folder = RunFolder(out, None, marks=("probes.jsonl",))
    assert folder.decide(REFUSALS) == Decision()
    (out / "probes.jsonl").unlink()
    with pytest.raises(UserError, match="is not ours"):
        folder.decide(REFUSALS)


def test_whole_record_identity_less_ignored_names(tmp_path):
    out = made(tmp_path, {**IDENTITY, "metric_axes": {"clip": "text"}})
    assert RunFolder(out).decide(REFUSALS, IDENTITY, ignore=("metric_axes",)).earlier["seed"] == 3
    with pytest.raises(UserError, match=r"different extra\)$"):  # a name only the new run has differs too
        RunFolder(out).decide(REFUSALS, {**IDENTITY, "extra": 1}, ignore=("metric_axes",))


def test_an_interrupted_record_write_leaves_the_old_record(tmp_path, monkeypatch):
    out = made(tmp_path)
    folder = RunFolder(out)
    folder.write_record({**IDENTITY, "images": ["a.png"]})
    real_write = pathlib.Path.write_text

    def killed_halfway(self, data, *args, **kwargs):
        real_write(self, data[: len(data) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        folder.write_record({**IDENTITY, "images": ["a.png", "b.png"]})
    monkeypatch.undo()
    assert folder.read_record() == {**IDENTITY, "images": ["a.png"]}
    assert folder.decide(REFUSALS, IDENTITY, keys=KEYS).earlier["images"] == ["a.png"]


def test_one_process_at_a_time_holds_the_lock(tmp_path):
    first = RunFolder(tmp_path / "out", what="output folder").lock().acquire()
    try:
        with pytest.raises(UserError, match="is being written by another steerguide process"):
            RunFolder(tmp_path / "out").lock().acquire()
    finally:
        first.release()
    RunFolder(tmp_path / "out").lock().acquire().release()


def test_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match=r"^--out .*sub is not writable: .*a-file is a file$"):
        RunFolder(tmp_path / "a-file" / "sub", what="--out").decide(REFUSALS, IDENTITY, keys=KEYS)
