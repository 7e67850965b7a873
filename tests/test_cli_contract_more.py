"""More of the CLI's contract (docs/cli.md; issue 29, "Also"): the lines a command prints whole at any
terminal width, and bad input that used to end as an internal error, a kill, a silent default or a
record that lies, each now one line and exit 2 before any work.

Every case runs in-process (`steerguide.cli.run`); most load no model."""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path

import pytest
import yaml

from steerguide.cli import run

SAMPLE = Path("/work/shared/dreambench-sample")
SRC = Path(__file__).resolve().parents[1] / "src" / "steerguide"
FAKE_METRICS = ["steerguide.evaluate.fakes:MeanColorFidelity", "steerguide.evaluate.fakes:BrightnessText"]
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="DreamBench sample not present")


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def bad(capsys, argv: list, code: int = 2) -> str:
    """Run `argv`; it must fail with `code` and exactly one `steerguide: error: ...` line on stderr."""
    got = run([str(a) for a in argv])
    err = _lines(capsys)
    assert got == code, err
    assert len(err) == 1 and err[0].startswith("steerguide: error: "), err
    assert "internal error" not in err[0], err
    return err[0]


def fake_sweep(**changes) -> dict:
    data = {
        "base": "unused-base",
        "benchmark": {"name": "dreambench", "root": str(SAMPLE), "subjects": ["dog", "teapot"], "num_prompts": 3},
        "guidance": {"cfg": {"scale": [1.0, 3.0]}, "pg": {"scale": 3.0, "omega": [0.0, 0.5]}},
        "seeds": 2,
        "metrics": FAKE_METRICS,
        "sampler": "steerguide.evaluate.fakes:NoiseSampler",
    }
    data.update(changes)
    return data


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


# -- terminal width: what a command prints is read whole, never wrapped --------------------------------


@pytest.fixture(params=["COLUMNS", "terminal"])
def narrow(request, monkeypatch):
    """A 40-column world: COLUMNS=40, or a terminal of 40 columns inherited on the standard streams (as
    an xdist worker's)."""
    if request.param == "COLUMNS":
        monkeypatch.setenv("COLUMNS", "40")
    else:
        monkeypatch.delenv("COLUMNS", raising=False)
        monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((40, 24)))


@needs_sample
def test_lines_and_tables_are_whole_at_any_width(tmp_path, capsys, narrow):
    config = write_yaml(tmp_path / "s.yaml", fake_sweep())
    assert run(["sweep", str(config), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert capsys.readouterr().err.strip() == (
        "48 rows (4 settings × 2 seeds × 3 prompts × 2 subjects), 0 done, 48 to run"
    )
    assert run(["sweep", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "new rows (0 of 48 done before) in " in capsys.readouterr().err
    assert run(["report", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"report: {tmp_path / 'out' / 'report' / 'index.html'}" in printed
    assert re.search(r"│ pg w=3 ω=0\.5 +│ +12 │", printed), printed


def test_every_console_comes_from_the_one_factory():
    """A rich Console made elsewhere would take the terminal's width again (progress.console)."""
    made = [
        f"{path.relative_to(SRC)}:{n}"
        for path in SRC.rglob("*.py")
        if path.name != "progress.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bConsole\(", line)
    ]
    assert made == []
