"""The overhead benchmark runs end to end (a smoke test; its figures are measured, not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_overhead_benchmark_smoke():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "overhead.py"),
            "--methods",
            "cfg-lora,pg-lora,naive-3pass,cfg-full,pg-full",
            "--rounds",
            "1",
            "--steps",
            "2",
            "--skip-memory",
            "--channels",
            "32,64",
            "--resolution",
            "32",
            "--prompts",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    table = {
        line.split()[0]: line.split()[1:]
        for line in lines
        if line.split() and line.split()[0] in ("cfg-lora", "pg-lora", "naive-3pass", "cfg-full", "pg-full")
    }
    assert set(table) == {"cfg-lora", "pg-lora", "naive-3pass", "cfg-full", "pg-full"}
    assert float(table["cfg-lora"][1]) == 1.0 and float(table["cfg-full"][1]) == 1.0


def test_toy_dreambench_configs_expand_to_the_documented_grids():
    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.evaluate.sweep import expand, load_config

    folder = ROOT / "benchmarks" / "toy_dreambench"
    sizes = {}
    for name in ("config.yaml", "config-base.yaml"):
        config = load_config(folder / name)
        sizes[name] = (len(config.settings), len(expand(config, load_benchmark(config.benchmark))))
    # 10 subjects × 16 prompts × 2 seeds per setting (docs/results.md)
    assert sizes == {"config.yaml": (19, 19 * 320), "config-base.yaml": (1, 320)}
