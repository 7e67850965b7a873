"""Where PG-full's extra time goes: an operator profile of one CFG-full step and one PG-full step.

    python benchmarks/overhead_profile.py --prompts 1 --resolution 128    # SD 1.5 UNet config, 64×64 latents

Same model as `overhead.py --model sd15-full` (random weights; the test autoencoder halves the image side),
one step per sampling run, one torch thread, a warm-up run of each method first; prints each run's CPU
time and torch.profiler's table of the operators with the most self CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--rows", type=int, default=14, help="operators listed per table")
    args = parser.parse_args()
    for name in ("prompts", "resolution", "rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(1)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from overhead import build_models

    from steerguide.guidance import GuidanceConfig
    from steerguide.loading import load_personalization, load_pipeline
    from steerguide.sampling import sample

    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp), (64,), 8, full_size=True)
        pipe = load_pipeline(models["base"])
        personal = load_personalization(pipe, models["full"])
        from torch.profiler import ProfilerActivity, profile

        configs = {"cfg-full": GuidanceConfig("cfg", 5.0), "pg-full": GuidanceConfig("pg", 5.0, omega=0.5)}
        prompts = ["a photo of a sks dog"] * args.prompts
        kwargs = dict(
            steps=1,
            height=args.resolution,
            width=args.resolution,
            seed=0,
            progress=False,
            output_type="latent",
            batch_size=args.prompts,
        )
        for config in configs.values():
            sample(pipe, personal, config, prompts, **kwargs)  # warm-up
        for name, config in configs.items():
            start = time.process_time()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                sample(pipe, personal, config, prompts, **kwargs)
            print(f"== {name}: {time.process_time() - start:.1f} s of CPU for one step", flush=True)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows), flush=True)


if __name__ == "__main__":
    main()
