"""Smoke test on a tiny real model: a sweep killed with SIGKILL mid-run resumes to exactly its grid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steerguide.cli import run

SAMPLE = Path("/work/shared/dreambench-sample")


@pytest.mark.slow
@pytest.mark.skipif(not SAMPLE.is_dir(), reason="DreamBench sample not present")
def test_sigkill_mid_sweep_then_resume(tmp_path, tiny_model_dir):
    import yaml

    from steerguide.loading import load_pipeline
    from steerguide.testing import save_random_lora
    from steerguide.testing.metric_models import save_tiny_clip, save_tiny_vit

    base = tiny_model_dir("sd15")
    lora = save_random_lora(load_pipeline(str(base)), tmp_path / "lora")
    clip, vit = save_tiny_clip(tmp_path / "clip"), save_tiny_vit(tmp_path / "vit")
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": str(base),
                "benchmark": {
                    "name": "dreambench",
                    "root": str(SAMPLE),
                    "subjects": ["teapot"],
                    "num_prompts": 4,
                },
                "personalization": {"paths": {"*": str(lora)}},
                "guidance": {"cfg": {"scale": 3.0}, "pg": {"scale": 3.0, "omega": [0.0]}},
                "seeds": 1,
                "sampling": {"steps": 2, "batch_size": 1},
                "metrics": {"dino": str(vit), "clip_i": str(clip), "clip_t": str(clip)},
            }
        )
    )
    out = tmp_path / "out"
    results = out / "results.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from steerguide.cli import main; main()",
            "sweep",
            str(config),
            "--out",
            str(out),
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    before = [json.loads(line) for line in results.read_text().splitlines()]  # every line whole
    assert 2 <= len(before) < 8

    assert run(["sweep", str(config), "--out", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    assert rows[: len(before)] == before  # the resume only appended
    assert all((out / r["image"]).is_file() for r in rows)
    assert not list(out.rglob(".*.tmp*"))  # nothing half-written left behind
    for r in rows:
        assert set(r["metrics"]) == {"dino", "clip_i", "clip_t"}
        assert -1.0 <= r["metrics"]["clip_t"] <= 1.0 and r["metrics"]["dino"] > 0
    assert {(r["method"], r["omega"]) for r in rows} == {("cfg", None), ("pg", 0.0)}
    assert run(["sweep", str(config), "--out", str(out), "--no-progress"]) == 0
    assert results.read_text().count("\n") == 8  # a second resume has nothing to do
