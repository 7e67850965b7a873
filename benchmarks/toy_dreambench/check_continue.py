"""Check on the real recipe that continuing a shorter strength's LoRA gives the LoRA a fresh training gives.

    python benchmarks/toy_dreambench/check_continue.py CONFIG --shorter DIR --fresh DIR --subject NAME --out WORK

CONFIG is a strength's config (e.g. config-triple.yaml), `--fresh` the sweep folder where that strength was
trained from step 0, `--shorter` the sweep folder of a shorter strength (e.g. the default). The subject's
training is seeded from the shorter one's last checkpoint (as `run.py --continue-from` does), run to the
end in WORK, and its LoRA compared tensor by tensor with the fresh one: prints the largest difference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("--shorter", required=True)
    parser.add_argument("--fresh", required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not Path(args.config).is_file():
        parser.error(f"config {args.config}: no such file")
    if not Path(args.shorter, "personalizations").is_dir():
        parser.error(f"--shorter {args.shorter}: no sweep folder with personalizations")
    fresh = [
        p for p in sorted(Path(args.fresh, "personalizations").glob(f"{args.subject}-*/pytorch_lora_weights.safetensors"))
        if not p.parent.suffix  # not an unfinished `.partial` one
    ]
    if not fresh:
        parser.error(f"--fresh {args.fresh}: no finished LoRA of {args.subject} in it")
    out = Path(args.out) / f"{args.subject}.partial"
    if out.exists():
        parser.error(f"--out: {out} exists; give an empty folder")

    import torch
    from safetensors.torch import load_file

    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.sweep import load_config
    from steerguide.sweep.cache import seed_from_shorter, train_config_for
    from steerguide.train import train

    torch.set_num_threads(1)
    config = load_config(args.config)
    (subject,) = load_benchmark({**config.benchmark, "subjects": [args.subject]}).subjects
    target = train_config_for(config, subject, out)
    seeded = seed_from_shorter(target, subject.name, [args.shorter])
    if seeded is None:
        parser.error(f"--shorter {args.shorter}: no finished shorter training of {subject.name} with the same recipe")
    t0 = time.perf_counter()
    trained = Path(train(target, progress=True))
    a, b = load_file(fresh[0]), load_file(trained / "pytorch_lora_weights.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(
        f"{subject.name}: continued from {seeded[1]} steps ({seeded[0]}) to {target.max_steps} in "
        f"{time.perf_counter() - t0:.0f} s; {len(a)} tensors, same names: {set(a) == set(b)}, "
        f"largest |difference| against the fresh training: {worst:.3g}"
    )


if __name__ == "__main__":
    from steerguide.errors import UserError

    try:
        main()
    except UserError as e:  # a bad config or subject name: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
