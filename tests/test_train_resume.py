"""Checkpoints and --resume: a resumed run continues the interrupted one exactly, even after SIGKILL.

Data-parallel resume: test_train_distributed.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from steerguide.errors import UserError
from steerguide.train import TrainConfig, train
from steerguide.train.trainer import checkpoints

pytestmark = pytest.mark.filterwarnings("ignore::steerguide.train.TrainWarning")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(base, images, out, **extra) -> TrainConfig:
    settings = dict(  # noqa: C408 (keyword form mirrors TrainConfig)
        base=base,
        images=images,
        out=out,
        token="sks",
        class_noun="dog",
        instance_prompt="sks dog",
        steps=4,
        learning_rate=1e-2,
        checkpoint_every=2,
        validation_images=0,
        random_flip=True,
        crop="random",
        seed=3,
    )
    settings.update(extra)
    return TrainConfig(**settings)


@pytest.mark.parametrize("method", ["lora", "custom-diffusion"])
def test_resumed_run_equals_uninterrupted_run(tiny_model_dir, photo_dir, tmp_path, method):
    base = tiny_model_dir("sd15")
    # Custom Diffusion: the token at its own rate (a second optimizer parameter group to restore)
    rates = {"embedding_learning_rate": 3e-2} if method == "custom-diffusion" else {}
    whole = train(config(base, photo_dir, tmp_path / "whole", method=method, **rates), progress=False)
    # The same run stopped after its step-2 checkpoint, then resumed to 4 steps.
    part = tmp_path / "part"
    train(config(base, photo_dir, part, method=method, steps=2, **rates), progress=False)
    assert [p.name for p in checkpoints(part)] == ["step-2"]
    train(config(base, photo_dir, part, method=method, resume=True, **rates), progress=False)

    a, b = (json.loads((d / "train.json").read_text()) for d in (whole, part))
    assert b["steps"] == 4 and b["resumed_from"] == [2] and a["resumed_from"] == []
    assert np.allclose(a["losses"], b["losses"], rtol=1e-5, atol=1e-7)
    weights = "pytorch_lora_weights.safetensors" if method == "lora" else "custom_diffusion.safetensors"
    wa, wb = load_file(whole / weights), load_file(part / weights)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    if method == "custom-diffusion":
        ea, eb = (load_file(d / "learned_embeds.safetensors") for d in (whole, part))
        assert all(torch.allclose(ea[k], eb[k], atol=1e-6) for k in ea)
    assert [p.name for p in checkpoints(part)] == ["step-2", "step-4"]


def test_a_longer_training_continues_a_shorter_one_exactly(tiny_model_dir, photo_dir, tmp_path):
    """The sweep's warm start (`seed_from_shorter`): a 4-step training seeded from a finished 2-step one of
    the same recipe equals a fresh 4-step training. It is refused where it would not be exact or not the
    same recipe. Wrong: seeding whatever has fewer steps (another learning rate, a cosine schedule that
    depends on the total steps), or a shorter run that is not the longest available."""
    from steerguide.sweep.cache import seed_from_shorter

    base = tiny_model_dir("sd15")
    fresh = train(config(base, photo_dir, tmp_path / "fresh"), progress=False)
    sweep = tmp_path / "short-sweep"
    shorter = {n: sweep / "personalizations" / f"sks_dog-{n}" for n in (1, 2)}
    for n, folder in shorter.items():
        train(config(base, photo_dir, folder, steps=n, checkpoint_every=1), progress=False)
    (sweep / "personalizations" / "sks_dog-x.partial").mkdir()  # an unfinished training: never a source

    def target(name, **extra):
        return config(base, photo_dir, tmp_path / name / "out.partial", resume=True, **extra)

    assert seed_from_shorter(target("lr", learning_rate=2e-2), "sks_dog", [sweep]) is None
    cosine = dict(checkpoint_every=1, lr_scheduler="cosine")
    train(config(base, photo_dir, sweep / "personalizations" / "sks_dog-cos", steps=2, **cosine), progress=False)
    assert seed_from_shorter(target("cos", steps=4, **cosine), "sks_dog", [sweep]) is None
    assert seed_from_shorter(target("same", steps=2, checkpoint_every=1), "sks_dog", [sweep]) == (shorter[1], 1)
    assert seed_from_shorter(target("other", steps=4), "sks_cat", [sweep]) is None

    continued = target("continued", checkpoint_every=1)
    assert seed_from_shorter(continued, "sks_dog", [tmp_path / "empty", sweep]) == (shorter[2], 2)
    assert seed_from_shorter(continued, "sks_dog", [sweep]) is None  # its folder exists now: resume it
    out = train(continued, progress=False)
    record = json.loads((out / "train.json").read_text())
    assert record["resumed_from"] == [2] and record["steps"] == 4
    wa, wb = (load_file(d / "pytorch_lora_weights.safetensors") for d in (fresh, out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_other_settings(tiny_model_dir, photo_dir, tmp_path):
    base = tiny_model_dir("sd15")
    train(config(base, photo_dir, tmp_path / "run", steps=2), progress=False)
    with pytest.raises(UserError, match="rank=4"):
        train(config(base, photo_dir, tmp_path / "run", rank=8, resume=True), progress=False)


def test_checkpoints_are_pruned_to_the_last_k(tiny_model_dir, photo_dir, tmp_path):
    out = train(
        config(
            tiny_model_dir("sd15"),
            photo_dir,
            tmp_path / "run",
            steps=5,
            checkpoint_every=1,
            checkpoints_total_limit=2,
        ),
        progress=False,
    )
    assert [p.name for p in checkpoints(out)] == ["step-4", "step-5"]
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_sigkill_then_resume(tiny_model_dir, photo_dir, tmp_path):
    """SIGKILLed after a checkpoint, a run resumes with the same command and ends on the exact step."""
    # 20 steps: killed at its first checkpoint (step 3), the run has 17 to go, seconds of CPU, far more
    # than the 20 ms poll; the assertion below says so if it ever is not.
    out, every, steps = tmp_path / "run", 3, 20
    command = [
        sys.executable,
        "-c",
        "from steerguide.cli import main; main()",
        "train",
        "--base",
        str(tiny_model_dir("sd15")),
        "--images",
        str(photo_dir),
        "--out",
        str(out),
        "--token",
        "sks",
        "--class-noun",
        "dog",
        "--instance-prompt",
        "sks dog",
        "--steps",
        str(steps),
        "--checkpoint-every",
        str(every),
        "--checkpoints-total-limit",
        "1",
        "--validation-images",
        "0",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not checkpoints(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run must still be going when killed"
    assert not (out / "train.json").exists()
    kept = checkpoints(out)
    assert len(kept) == 1
    step = int(kept[0].name[5:])
    assert step % every == 0 and every <= step < steps

    # The same command with --resume, run in this process (a second interpreter would only import again).
    from steerguide.cli import run

    assert run(command[3:] + ["--resume"]) == 0
    record = json.loads((out / "train.json").read_text())
    assert record["steps"] == steps and len(record["losses"]) == steps
    assert record["resumed_from"] == [step]
    assert np.isfinite(record["losses"]).all()
