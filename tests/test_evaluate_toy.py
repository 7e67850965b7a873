"""The toy world through the benchmark and metric interfaces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from steerguide import toyworld
from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import load_benchmark
from steerguide.evaluate.metrics import build_metrics
from steerguide.toyworld.benchmark import toy_benchmark


def _fidelity_weights_present() -> bool:
    try:
        toyworld.FidelityJudge()
    except UserError:
        return False
    return True


def test_toy_subjects_through_the_benchmark_interface():
    bench = load_benchmark({"name": "toy", "num_prompts": 4})
    assert [s.name for s in bench.subjects] == list(toyworld.SUBJECTS)
    for s in bench.subjects:
        world = toyworld.get_subject(s.name)
        assert (s.token, s.class_noun, s.instance_prompt) == (
            world.token,
            world.class_noun,
            world.instance_prompt,
        )
        assert s.prompts == world.eval_prompts()[:4]
        assert all(f"{s.token} " in p and s.class_noun in p for p in s.prompts)
    first = bench.subjects[0]
    assert len(first.reference_images()) == toyworld.get_subject(first.name).n_references
    assert len(first.fidelity_references()) == 8
    with pytest.raises(UserError, match="the toy world has no subject 'unicorn'"):
        toy_benchmark(["unicorn"])


def test_toy_text_metric_reads_the_prompt_with_its_token():
    (text,) = build_metrics(["toy_text"])
    subject = toyworld.get_subject(toy_benchmark().subjects[0].name)
    specs, prompts = subject.eval_specs()[:4], subject.eval_prompts()[:4]
    rng = np.random.default_rng(0)
    images = [
        subject.render(toyworld.complete(spec, rng, p_second=0.0), seed=i) for i, spec in enumerate(specs)
    ]
    assert text.raw_prompts
    assert text.score(images, prompts) == [1.0] * 4  # ground-truth renders obey their prompts
    # Pair each image with another prompt: the background / position stated no longer match.
    assert min(text.score(images, prompts[1:] + prompts[:1])) < 1.0


@pytest.mark.skipif(not _fidelity_weights_present(), reason="toy fidelity judge weights not shipped yet")
def test_toy_fidelity_metric_prefers_the_subject_itself():
    (fid,) = build_metrics(["toy-fidelity"])
    a, b = toy_benchmark().subjects[:2]
    refs = fid.prepare(a.fidelity_references())
    own = fid.score(a.reference_images(), a.prompts[:5], refs)
    other = fid.score(b.reference_images(), b.prompts[:5], refs)
    assert min(own) > max(other)


@pytest.mark.skipif(not _fidelity_weights_present(), reason="toy fidelity judge weights not shipped yet")
def test_toy_sweep_rows_carry_the_toy_metrics(tmp_path: Path):
    from steerguide.sweep import parse_config, run_sweep
    from steerguide.testing.sweep import NoiseSampler

    cfg = parse_config(
        {
            "base": "toy",
            "benchmark": {"name": "toy", "num_prompts": 2},
            "guidance": {"pg": {"scale": 3.0, "omega": [0.0]}},
            "metrics": ["toy_text", "toy_fidelity"],
            "sampler": "steerguide.testing.sweep:NoiseSampler",
        }
    )
    stats = run_sweep(cfg, tmp_path, sampler=NoiseSampler(size=32))
    assert stats.written == 2 * len(toyworld.SUBJECTS)


def test_an_exported_toy_folder_reads_as_dreambench(tmp_path: Path):
    folder = toyworld.export_subjects(tmp_path / "toy", ["sks_star", "zwx_heart"])
    bench = load_benchmark({"name": "dreambench", "root": str(folder), "num_prompts": 3})
    assert [s.name for s in bench.subjects] == ["sks_star", "zwx_heart"]
    star = bench.subject("sks_star")
    world = toyworld.get_subject("sks_star")
    assert (star.token, star.class_noun, star.prompts) == (
        world.token,
        world.class_noun,
        world.eval_prompts()[:3],
    )
    assert len(star.reference_images()) == world.n_references
