"""Data-parallel training over torch.distributed (gloo, 2 CPU processes), checkpointed and resumed.

Its own file (split from test_train_resume.py): two torchrun launches are the suite's longest test, and
pytest-xdist's `--dist loadfile` gives each file to one worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::steerguide.train.TrainWarning")


def test_two_processes_with_torch_distributed(tiny_model_dir, photo_dir, tmp_path):
    """Data-parallel training (what `accelerate launch --multi_gpu` starts), as 2 CPU processes over gloo,
    checkpointed and resumed; the result loads with stock diffusers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "steerguide.train",
        "--base",
        str(tiny_model_dir("sd15")),
        "--images",
        str(photo_dir),
        "--out",
        str(out),
        "--instance-prompt",
        "sks dog",
        "--method",
        "lora",
        "--train-text-encoder",
        "--checkpoint-every",
        "2",
        "--validation-images",
        "1",
        "--validation-inference-steps",
        "2",
        "--quiet",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for steps, resume in (("2", []), ("4", ["--resume"])):
        done = subprocess.run(
            command + ["--steps", steps, *resume],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("steerguide: warning:") == 1  # shown by the main process only
    record = json.loads((out / "train.json").read_text())
    assert record["num_processes"] == 2 and record["steps"] == 4 and record["resumed_from"] == [2]
    assert sorted(p.name for p in (out / "checkpoints" / "step-4").glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_model_dir("sd15"))
    pipe.load_lora_weights(out)
