"""The plugin registries: named bases resolved where pipelines load, one-line errors naming the known
entries, and a third party's plugin found through the `steerguide.plugins` entry points."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from steerguide import plugins
from steerguide.errors import UserError


def test_load_pipeline_resolves_the_named_toy_base():
    from steerguide.loading import load_pipeline
    from steerguide.toyworld.assets import base_model_path

    pipe = load_pipeline("toy")
    assert Path(pipe.name_or_path).resolve() == base_model_path().resolve()


def test_an_unknown_base_is_one_line():
    from steerguide.bases import BASES
    from steerguide.loading import load_pipeline

    with pytest.raises(UserError) as e:
        BASES.lookup("no-such-base")
    assert str(e.value) == "unknown base model 'no-such-base'; expected one of toy"
    with pytest.raises(UserError) as e:
        load_pipeline("./no-such-base")
    assert "\n" not in str(e.value) and "no-such-base" in str(e.value)


@pytest.mark.parametrize(
    ("registry", "known"),
    [
        ("steerguide.evaluate.benchmarks:BENCHMARKS", "dreambench, toy"),
        ("steerguide.evaluate.metrics:METRICS", "dino, clip_i, clip_t, toy_text, toy_fidelity"),
        ("steerguide.train.recipes:RECIPES", "toy"),
    ],
)
def test_an_unknown_name_is_one_line_naming_the_known_ones(registry, known):
    import importlib

    module, _, name = registry.partition(":")
    found = getattr(importlib.import_module(module), name)
    with pytest.raises(UserError) as e:
        found.lookup("nope")
    assert str(e.value) == f"unknown {found.kind} 'nope'; expected one of {known}"


def test_a_third_party_plugin_is_found_through_its_entry_point(monkeypatch, tmp_path):
    """A module outside steerguide, named by an entry point, registers a benchmark when discovered."""
    from importlib import metadata

    from steerguide.evaluate.benchmarks import BENCHMARKS, load_benchmark

    (tmp_path / "my_world_plugin.py").write_text(
        "from steerguide.evaluate.benchmarks import BENCHMARKS, Benchmark\n"
        "BENCHMARKS.register('my_world', lambda spec: Benchmark(name='my_world', subjects=[]))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    point = metadata.EntryPoint("my_world", "my_world_plugin", plugins.GROUP)
    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points",
                        lambda **kw: [point] if kw.get("group") == plugins.GROUP else real(**kw))
    monkeypatch.setattr(plugins, "_discovered", False)
    monkeypatch.setattr(BENCHMARKS, "_entries", dict(BENCHMARKS._entries))  # undone after the test
    assert "my_world" not in BENCHMARKS._entries
    assert load_benchmark({"name": "my_world"}).name == "my_world"
    assert list(BENCHMARKS)[-1] == "my_world"
    monkeypatch.delitem(sys.modules, "my_world_plugin")
