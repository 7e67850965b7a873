"""The toy world: renderer, grammar, subjects, judges, the shipped base model and the CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from steerguide.cli import run
from steerguide.errors import UserError
from steerguide.toyworld import (
    SUBJECTS,
    FidelityJudge,
    Spec,
    TextJudge,
    base_model_path,
    caption,
    get_subject,
    parse_caption,
    random_spec,
    render,
    render_array,
    roc_auc,
)
from steerguide.toyworld.tokenizer import build_tokenizer, word_ids
from steerguide.toyworld.world import RARE_TOKENS, random_caption, vocabulary


def test_render_is_deterministic_by_seed():
    spec = random_spec(np.random.default_rng(3))
    a, b = render_array(spec, seed=11), render_array(spec, seed=11)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_array(spec, seed=12))  # the jitter differs


def test_caption_round_trips_through_the_parser():
    rng = np.random.default_rng(0)
    for _ in range(200):
        spec = random_spec(rng)
        assert parse_caption(caption(spec)) == spec.replace(has_second=None)
        stated = parse_caption(random_caption(spec, rng))
        for field in ("shape", "color", "pattern", "size", "position", "background", "second"):
            assert getattr(stated, field) in (None, getattr(spec, field))
    assert parse_caption("a blue sks star on a pink background").token == "sks"


@pytest.mark.parametrize("bad", [
    Spec(shape="hexagon", color="red", pattern="plain", size="large", position="center", background="white"),
    Spec(shape="star", color="red", pattern="plain", size="large", position="center"),  # no background
])
def test_bad_spec_is_a_user_error(bad):
    with pytest.raises(UserError):
        render(bad)


def test_unknown_caption_is_a_user_error():
    with pytest.raises(UserError):
        parse_caption("a star wearing a hat")


def test_every_word_is_one_token():
    ids = word_ids(build_tokenizer())
    assert len(set(ids.values())) == len(vocabulary())
    assert set(RARE_TOKENS) <= set(ids)


def test_text_judge_reads_renders():
    judge, rng = TextJudge(), np.random.default_rng(5)
    for i in range(6):
        spec = random_spec(rng)
        img = render(spec, seed=i)
        assert judge.score(img, caption(spec)) == 1.0
        other_bg = next(b for b in ("white", "black") if b != spec.background)
        breakdown = judge.breakdown(img, caption(spec.replace(background=other_bg)))
        assert breakdown["background"] is False and breakdown["shape"] is True


def test_subjects_have_references_and_parseable_prompts(tmp_path):
    assert len(SUBJECTS) >= 8
    s = get_subject("sks")
    assert s.instance_prompt == "a sks star" and get_subject("sks_star") is s
    refs = s.reference_images()
    assert len(refs) == 5
    for p in s.eval_prompts():
        assert parse_caption(p).token == "sks"
    folder = s.export(tmp_path)
    assert sorted(f.name for f in folder.iterdir())[:2] == ["00.png", "01.png"]
    with pytest.raises(UserError, match="known subjects"):
        get_subject("nobody")


def test_roc_auc():
    assert roc_auc([2, 3], [0, 1]) == 1.0
    assert roc_auc([0], [1]) == 0.0
    assert roc_auc([1], [1]) == 0.5


needs_assets = pytest.mark.skipif(not (base_model_path() / "model_index.json").exists(),
                                  reason="base model not built")


@needs_assets
def test_fidelity_judge_tells_a_subject_from_its_class():
    judge = FidelityJudge()
    s = get_subject("sks_star")
    refs = s.reference_images()
    own = judge.fidelity(s.heldout_images(4), refs)
    rng = np.random.default_rng(0)
    others = [render(random_spec(rng).replace(shape="star"), seed=i) for i in range(4)]
    others += get_subject("kfp_star").heldout_images(4)
    assert min(own) > max(judge.fidelity(others, refs))
    assert judge.embed(refs).shape[0] == len(refs)


@needs_assets
def test_shipped_pipeline_loads_with_stock_diffusers_and_samples():
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base_model_path())
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None
    ids = pipe.tokenizer("a sks star").input_ids
    assert len(ids) == 5  # start, "a", "sks", "star", end: the rare token is one word of the vocabulary
    assert word_ids(pipe.tokenizer) == word_ids(build_tokenizer())  # shipped = rebuilt, id for id
    t0 = time.time()
    out = pipe(["a large red star on a white background"] * 2, height=32, width=32, num_inference_steps=10,
               guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 32, 32, 3)
    assert time.time() - t0 < 30  # about 1 s on an idle 2-core CPU; generous for a shared one


def test_cli_render_then_judge(tmp_path, capsys):
    assert run(["toyworld", "render", str(tmp_path), "--n", "4", "--seed", "1"]) == 0
    capsys.readouterr()
    assert run(["toyworld", "judge", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and all(r["text_alignment"] == 1.0 for r in rows)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert run(["toyworld", "prompts", "nobody"]) == 2
    assert run(["toyworld", "judge", str(tmp_path / "missing"), "--prompt", "a star"]) == 2
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert run(["toyworld", "judge", str(tmp_path), "--prompt", "a star"]) == 2
    assert run(["toyworld", "render", str(tmp_path / "r"), "--caption", "a star in the sky"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("steerguide: error:") for line in err)
