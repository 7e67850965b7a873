"""The tuning search against a plain grid of the same budget, on the fake tuning problem whose front is
known (`steerguide.testing.tuning`): many random problems, each scored by the TRUE objective of the setting
each method chooses (its regret: the true optimum's objective minus the chosen one's).

    python benchmarks/tune_heldout/search_vs_grid.py [--problems 200] [--probes 32] [--images 8] [--noise 0.05]

Both pick by the same rule (the best probe by the objective on noisy means of `--images` images); the grid
spends the same number of probes on scales × ω (constant) plus a fifth on the linear schedule.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from steerguide.testing.tuning import FrontParams
from steerguide.tune.objective import Target
from steerguide.tune.search import COARSE, LINEAR, Judged, Knob, grid_knobs, smooth
from steerguide.tune.tuner import next_knobs


def noisy(params: FrontParams, knob: Knob, images: int, rng: np.random.Generator, shared: np.ndarray) -> Judged:
    f, t = params.true_scores(knob)
    own = rng.normal(0, params.noise, (images, 2)).mean(0)
    return Judged(knob, f + shared[0] + own[0], t + shared[1] + own[1])


def true_value(params: FrontParams, target: Target, knob: Knob) -> float:
    cfg = [Judged(k, *params.true_scores(k)) for k in COARSE]  # the noise-free normalization
    j = Judged(knob, *params.true_scores(knob))
    rank = target.ranker(cfg)
    key = rank(j)
    return key[1] if key[0] == 1 else float("-inf")


DENSE = [
    Knob(w, o, s)
    for w, o, s in itertools.product(np.geomspace(1.0, 10.0, 80), np.linspace(0, 1, 41), ("constant", LINEAR))
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--noise", type=float, default=0.05)
    args = ap.parse_args()
    target = Target.parse("balanced")
    regrets = {"search": [], "grid": [], "search raw": [], "grid smoothed": []}
    rng = np.random.default_rng(0)
    for _ in range(args.problems):
        params = FrontParams.draw(rng, args.noise)
        shared = rng.normal(0, args.noise, 2) / np.sqrt(args.images)  # the prompts' common effect
        best = max(true_value(params, target, k) for k in DENSE)
        judged: dict[Knob, Judged] = {}
        noise = (args.noise**2 / args.images,) * 2  # the variance of a probe's mean from its own images
        while batch := next_knobs(judged, target, args.probes, noise):
            for k in batch:
                judged[k] = noisy(params, k, args.images, rng, shared)
        pick = target.choose(list(judged.values())).knob
        regrets["search raw"].append(best - true_value(params, target, pick))
        pick = target.choose(list(smooth(judged, noise).values())).knob
        regrets["search"].append(best - true_value(params, target, pick))
        grid = {k: noisy(params, k, args.images, rng, shared) for k in grid_knobs(args.probes)}
        grid.update({k: noisy(params, k, args.images, rng, shared) for k in COARSE if k.is_cfg and k not in grid})
        pick = target.choose(list(grid.values())).knob
        regrets["grid"].append(best - true_value(params, target, pick))
        pick = target.choose(list(smooth(grid, noise).values())).knob
        regrets["grid smoothed"].append(best - true_value(params, target, pick))
    diff = np.array(regrets["grid"]) - np.array(regrets["search"])
    boot = [rng.choice(diff, diff.size).mean() for _ in range(2000)]
    print(f"{args.problems} problems, {args.probes} probes × {args.images} images, noise sd {args.noise}")
    for name, values in regrets.items():
        v = np.array(values)
        print(f"  {name:13s} regret: mean {v.mean():.3f}, median {np.median(v):.3f}, 90th pct {np.quantile(v, 0.9):.3f}")
    lo, hi = np.quantile(boot, [0.025, 0.975])
    print(f"  grid − search: {diff.mean():.3f} [95% CI {lo:.3f}, {hi:.3f}]; search better on "
          f"{(diff > 0).mean():.0%} of problems, worse on {(diff < 0).mean():.0%}")


if __name__ == "__main__":
    main()
