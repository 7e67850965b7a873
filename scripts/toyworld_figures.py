"""Figures of the toy world for docs/toyworld.md: renders, subjects, base-model samples, loss curve.

    python scripts/toyworld_figures.py [--out docs/images] [--train-log PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from steerguide.toyworld import SUBJECTS, caption, load_base_pipeline, random_spec, render
from steerguide.toyworld.assets import train_log_path
from steerguide.toyworld.checks import base_prompts, sample
from steerguide.toyworld.cli import save_grid


def loss_plot(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    offset, minutes = 0, 0.0
    for phase, curve in log["loss_curves"].items():
        steps, loss = zip(*curve, strict=True)
        ax.plot([offset + s for s in steps], loss, label=phase)
        offset += steps[-1]
        minutes += log["timings"].get(f"{phase}_s", 0) / 60
    ax.set_xlabel(f"UNet step (batch {log['config']['unet_batch']})")
    ax.set_ylabel("v-prediction MSE (running mean)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"base model UNet (text encoder frozen): {minutes:.0f} min on a 2-core CPU", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def subjects_figure(path: Path) -> None:
    """A row per subject: its 5 photos, then 3 held-out renders (contexts the photos never show)."""
    rows = []
    for s in SUBJECTS.values():
        rows += s.reference_images() + s.heldout_images(3)
    save_grid(rows, path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("docs/images"))
    p.add_argument("--train-log", type=Path, default=train_log_path())
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(2025)
    specs = [random_spec(rng) for _ in range(32)]
    save_grid([render(s, seed=i) for i, s in enumerate(specs)], args.out / "toyworld_renders.png")
    (args.out / "toyworld_renders.txt").write_text("\n".join(caption(s) for s in specs) + "\n")

    subjects_figure(args.out / "toyworld_subjects.png")

    pipe = load_base_pipeline()
    prompts = base_prompts(32, seed=1)
    save_grid(sample(pipe, prompts, seed=1), args.out / "toyworld_base_samples.png")
    (args.out / "toyworld_base_samples.txt").write_text("\n".join(prompts) + "\n")

    if args.train_log.exists():
        loss_plot(json.loads(args.train_log.read_text()), args.out / "toyworld_loss.png")
    print(f"wrote figures to {args.out}")


if __name__ == "__main__":
    main()
