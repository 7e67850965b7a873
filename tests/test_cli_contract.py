"""The CLI's contract (docs/cli.md): bad input is one line on stderr and exit 2, a bug one line and exit 1,
Ctrl-C one line saying what was kept and exit 130; paths and numbers are checked before any work.

Most cases never load a model: the checks come first, which is the point."""

from __future__ import annotations

import pytest
import typer

from steerguide.cli import run
from steerguide.errors import Interrupted


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def bad(capsys, argv: list[str], code: int = 2) -> str:
    """Run `argv`; it must fail with `code` and exactly one `steerguide: ...` line on stderr."""
    got = run([str(a) for a in argv])
    err = _lines(capsys)
    assert got == code, err
    assert len(err) == 1 and err[0].startswith("steerguide: "), err
    return err[0]


# -- the root: every exception ends as one line --------------------------------------------------------


@pytest.mark.parametrize(
    "raised,code,needle",
    [
        (RuntimeError("boom\nsecond line"), 1, "internal error: RuntimeError: boom"),
        (ValueError(), 1, "internal error: ValueError"),
        (MemoryError("out of memory"), 1, "internal error: MemoryError: out of memory"),
        (typer.Abort(), 1, "aborted"),
        (KeyboardInterrupt(), 130, "steerguide: interrupted"),
        (Interrupted("kept 3 images; rerun to continue"), 130, "interrupted: kept 3 images; rerun"),
    ],
)
def test_unexpected_error_inside_a_command_is_one_line(capsys, monkeypatch, tmp_path, raised, code, needle):
    import steerguide.sampling

    def explode(*args, **kwargs):
        raise raised

    monkeypatch.delenv("STEERGUIDE_DEBUG", raising=False)
    monkeypatch.setattr(steerguide.sampling, "generate", explode)
    line = bad(capsys, ["generate", "--method", "cfg", "-p", "x", "--out", tmp_path / "o"], code)
    assert needle in line, line


def test_exit_raised_inside_a_command_keeps_its_status(capsys, monkeypatch, tmp_path):
    import steerguide.sampling

    def leave(*args, **kwargs):
        raise typer.Exit(3)

    monkeypatch.setattr(steerguide.sampling, "generate", leave)
    assert run(["generate", "--method", "cfg", "-p", "x", "--out", str(tmp_path / "o")]) == 3


def test_debug_shows_the_traceback(monkeypatch, tmp_path):
    import steerguide.sampling

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setenv("STEERGUIDE_DEBUG", "1")
    monkeypatch.setattr(steerguide.sampling, "generate", explode)
    with pytest.raises(RuntimeError, match="boom"):
        run(["generate", "--method", "cfg", "-p", "x", "--out", str(tmp_path / "o")])


def test_version_and_help(capsys):
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.startswith("steerguide ")
    assert run(["--help"]) == 0
    assert "generate" in capsys.readouterr().out
    assert run([]) == 0  # bare command: help
    assert run(["toyworld"]) == 0


def test_installed_entry_point_prints_no_traceback(tmp_path):
    """The real process, as a user runs it: a pipeline error becomes one line (no typer traceback)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "steerguide", "toyworld", "judge", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
