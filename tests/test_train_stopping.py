"""`steerguide train --stop-when RULE`: train until a rule holds on validation renders.

The loop (`train_until`) on a scripted rule: when it stops, what it records, that its resumed segments are
one uninterrupted training, that an interrupted loop resumes its record; the toy world's `calibrated` rule
on what it measures (held out from `check-personalization`); the CLI's refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from steerguide.errors import UserError
from steerguide.train import TrainConfig, train
from steerguide.train.stopping import STOPPING_FILE, Check, check_schedule, train_until

pytestmark = pytest.mark.filterwarnings("ignore::steerguide.train.TrainWarning")


class Scripted:
    """A rule that answers from a script: step -> (passed, more_helps); it records the steps it saw."""

    name = "scripted"

    def __init__(self, answers: dict[int, tuple[bool, bool]]) -> None:
        self.answers = answers
        self.seen: list[int] = []

    def check(self, folder: Path) -> Check:
        step = json.loads((folder / "train.json").read_text())["steps"]
        self.seen.append(step)
        passed, more = self.answers[step]
        return Check(passed, more, f"scripted at {step}", {"figure": step / 10})


def config(base, images, out, **extra) -> TrainConfig:
    settings = dict(  # noqa: C408 (keyword form mirrors TrainConfig)
        base=base, images=images, out=out, token="sks", class_noun="dog", instance_prompt="sks dog", steps=2,
        learning_rate=1e-2, checkpoint_every=2, validation_images=0, seed=3,
    )
    settings.update(extra)
    return TrainConfig(**settings)


def quiet_train(c: TrainConfig) -> Path:
    return train(c, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_stops_where_the_rule_holds_and_the_segments_are_one_training(tiny_model_dir, photo_dir, tmp_path):
    base = tiny_model_dir("sd15")
    rule = Scripted({2: (False, True), 4: (False, True), 6: (True, False), 8: (True, False)})
    folder, ended = train_until(config(base, photo_dir, tmp_path / "ruled"), rule, 2, 10, quiet_train, log=lambda _: None)
    assert (ended, rule.seen) == ("held", [2, 4, 6])
    record = json.loads((folder / STOPPING_FILE).read_text())
    assert record["ended"] == "held" and [c["step"] for c in record["checks"]] == [2, 4, 6]
    assert [c["passed"] for c in record["checks"]] == [False, False, True] and record["checks"][1]["figure"] == 0.4
    # the three segments (2, +2, +2 steps, each resumed from the last one's checkpoint) are one 6-step run
    whole = quiet_train(config(base, photo_dir, tmp_path / "whole", steps=6))
    ours, theirs = load_file(folder / "pytorch_lora_weights.safetensors"), load_file(whole / "pytorch_lora_weights.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_stops_when_more_steps_cannot_help_or_at_max_steps(tiny_model_dir, photo_dir, tmp_path):
    base = tiny_model_dir("sd15")
    rule = Scripted({2: (False, True), 4: (False, False)})
    _, ended = train_until(config(base, photo_dir, tmp_path / "a"), rule, 2, 10, quiet_train, log=lambda _: None)
    assert (ended, rule.seen) == ("cannot hold", [2, 4])
    rule = Scripted({2: (False, True), 4: (False, True), 6: (False, True)})
    folder, ended = train_until(config(base, photo_dir, tmp_path / "b"), rule, 2, 5, quiet_train, log=lambda _: None)
    assert (ended, rule.seen) == ("max steps", [2, 4])  # 4 + 2 > 5: no step beyond --max-steps
    assert json.loads((folder / "train.json").read_text())["steps"] == 4


def test_an_interrupted_loop_resumes_its_record(tiny_model_dir, photo_dir, tmp_path):
    base = tiny_model_dir("sd15")
    out = tmp_path / "run"

    class Interrupt(Scripted):
        def check(self, folder):
            found = super().check(folder)
            if self.seen[-1] == 4:
                raise KeyboardInterrupt
            return found

    with pytest.raises(KeyboardInterrupt):
        train_until(config(base, photo_dir, out), Interrupt({2: (False, True), 4: (False, True)}), 2, 10,
                    quiet_train, log=lambda _: None)
    # the same command with --resume: training continues from step 4's checkpoint, step 2's check is kept
    rule = Scripted({4: (False, True), 6: (True, False)})
    _, ended = train_until(config(base, photo_dir, out, resume=True), rule, 2, 10, quiet_train, log=lambda _: None)
    checks = json.loads((out / STOPPING_FILE).read_text())["checks"]
    assert (ended, rule.seen, [c["step"] for c in checks]) == ("held", [4, 6], [2, 4, 6])


@pytest.mark.parametrize(("extra", "every", "most", "message"), [
    ({"lr_scheduler": "cosine"}, 2, 10, "--lr-scheduler constant"),
    ({"lr_warmup_steps": 1}, 2, 10, "no warmup"),
    ({"checkpoint_every": 3}, 2, 10, "--checkpoint-every (3) must divide --steps (2) and --check-every (2)"),
    ({"checkpoint_every": 0}, 2, 10, "must divide"),
    ({}, 3, 10, "--check-every (3)"),
    ({}, 0, 10, "--check-every must be >= 1"),
    ({}, 2, 1, "--max-steps 1 is below --steps 2"),
])
def test_schedules_that_would_not_be_one_training_are_refused(tmp_path, extra, every, most, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_schedule(config("b", "i", tmp_path, **extra), every, most)


def test_the_calibrated_rule_measures_what_the_check_does_not():
    from steerguide.toyworld import SUBJECTS
    from steerguide.toyworld.calibration import FIDELITY_REFERENCES
    from steerguide.toyworld.stopping import HELDOUT_DRAW, REFERENCE_DRAW, validation_prompts

    for subject in SUBJECTS.values():
        prompts = validation_prompts(subject)
        assert len(set(prompts)) == len(prompts) == 8
        assert not set(prompts) & set(subject.eval_prompts()), subject.name
        assert all(subject.token in p and subject.class_noun in p for p in prompts)
    subject = next(iter(SUBJECTS.values()))
    # its fidelity references and held-out renders are other renders than check-personalization's
    ours = subject.heldout_images(8, seed=REFERENCE_DRAW) + subject.heldout_images(8, seed=HELDOUT_DRAW)
    theirs = subject.heldout_images(FIDELITY_REFERENCES) + subject.heldout_images(8, seed=1)
    assert not {im.tobytes() for im in ours} & {im.tobytes() for im in theirs}


def test_only_a_miss_on_fidelity_alone_trains_on():
    from steerguide.train.criterion import assess, more_steps_can_help

    # text, text_base, F, F_base, F_heldout: normalized F = (F - 0) / (1 - 0)
    assert more_steps_can_help(assess(0.9, 1.0, 0.2, 0.0, 1.0))  # too little of the subject, prompt kept
    assert not more_steps_can_help(assess(0.9, 1.0, 0.5, 0.0, 1.0))  # holds
    assert not more_steps_can_help(assess(0.7, 1.0, 0.2, 0.0, 1.0))  # the prompt is already lost
    assert not more_steps_can_help(assess(0.9, 1.0, 0.9, 0.0, 1.0))  # more than the band: longer is worse


def test_calibrated_rule_on_a_toy_training(tmp_path, monkeypatch, capsys):
    """The CLI end to end on a 2-step toy LoRA (sampled in 2 steps, not 20, for time): it checks, records
    its figures, and an untrained LoRA keeps the base model's text (ratio 1) and none of the subject."""
    from steerguide.cli import run
    from steerguide.toyworld import stopping

    monkeypatch.setattr(stopping, "SAMPLING_STEPS", 2)
    out = tmp_path / "toy"
    code = run(["train", "--toy", "sks_star", "--out", str(out), "--steps", "2", "--checkpoint-every", "2",
                "--check-every", "2", "--max-steps", "4", "--lr", "1e-12", "--validation-images", "0",
                "--threads", "1", "--quiet", "--stop-when", "calibrated"])
    err = capsys.readouterr().err
    assert code == 0, err
    record = json.loads((out / STOPPING_FILE).read_text())
    assert [c["step"] for c in record["checks"]] == [2, 4] and record["ended"] == "max steps"
    first = record["checks"][0]
    assert first["text_ratio"] == pytest.approx(1.0, abs=1e-3) and abs(first["normalized_fidelity"]) < 0.02
    assert first["more_helps"] and "step 2: validation text ratio 1.00" in err


def test_cli_refusals(tmp_path, capsys):
    from steerguide.cli import run

    for args, message in [
        (["--stop-when", "nonsense"], "--stop-when 'nonsense': unknown stopping rule (known: calibrated"),
        (["--check-every", "50"], "--check-every, --max-steps, --judge-dino and --judge-clip go with --stop-when RULE"),
        (["--stop-when", "calibrated", "--lr-scheduler", "cosine"], "--lr-scheduler constant"),
    ]:
        code = run(["train", "--toy", "sks_star", "--out", str(tmp_path / "x"), *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x").exists()


def test_calibrated_needs_a_toy_subject(tiny_model_dir, photo_dir, tmp_path):
    from steerguide.train.stopping import rule_for

    with pytest.raises(UserError, match="it needs --toy SUBJECT"):
        rule_for("calibrated", config(tiny_model_dir("sd15"), photo_dir, tmp_path))


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    from steerguide.testing.metric_models import save_tiny_clip, save_tiny_vit

    root = tmp_path_factory.mktemp("judges")
    return str(save_tiny_vit(root / "vit")), str(save_tiny_clip(root / "clip"))


def test_dreambench_rule_against_the_judges_by_hand(tiny_model_dir, photo_dir, tmp_path, judges):
    """On a LoRA that has learned nothing (lr 1e-12) the personalized samples are the base model's: text
    = base text and F = F_base, which holds only if both are sampled on the same prompts and seeds; F_photos is
    the leave-one-out DINO similarity of the photos, computed here from the embeddings."""
    import numpy as np

    from steerguide.evaluate.metrics import DinoMetric
    from steerguide.evaluate.stopping import DreamBenchRule
    from steerguide.train.data import load_images

    dino, clip = judges
    c = config(tiny_model_dir("sd15"), photo_dir, tmp_path / "real", learning_rate=1e-12,
               validation_inference_steps=2)
    folder = quiet_train(c)
    found = DreamBenchRule(c, dino=dino, clip=clip).check(folder)
    emb = DinoMetric(dino).embed([im for _, im in load_images(photo_dir)]).numpy()
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    leave_one_out = np.mean([(sims[i].sum() - sims[i, i]) / (len(emb) - 1) for i in range(len(emb))])
    assert found.row["fidelity_heldout"] == pytest.approx(leave_one_out, abs=1e-4)
    assert found.row["text"] == pytest.approx(found.row["text_base"], abs=1e-4)  # (random CLIP: may be < 0)
    assert found.row["fidelity"] == pytest.approx(found.row["fidelity_base"], abs=1e-3)


def test_dreambench_rule_refusals(tiny_model_dir, photo_dir, tmp_path, judges):
    from steerguide.evaluate.stopping import DreamBenchRule

    dino, clip = judges
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes((photo_dir / sorted(p.name for p in photo_dir.iterdir())[0]).read_bytes())
    with pytest.raises(UserError, match="needs at least 2 photos"):
        DreamBenchRule(config(tiny_model_dir("sd15"), one, tmp_path / "o"), dino=dino, clip=clip)
    with pytest.raises(UserError, match="DINO"):
        DreamBenchRule(config(tiny_model_dir("sd15"), photo_dir, tmp_path / "o"), dino=str(tmp_path / "nope"),
                       clip=clip)
