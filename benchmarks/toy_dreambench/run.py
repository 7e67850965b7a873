"""Run a toy DreamBench sweep subject by subject, in several single-threaded worker processes.

    python benchmarks/toy_dreambench/run.py CONFIG --out DIR [--workers 2] [--subjects a,b,...]
        [--subjects-file F] [--continue-from DIR] [--deadline HH:MM] [--stop-at EPOCH_SECONDS]

Worker k takes subjects k, k + N, ... of the config's benchmark and, for each, trains (or finds cached) its
LoRA and runs its rows, so that a run cut short holds whole subjects, and a rerun resumes (the sweep's rows
and personalizations are keyed and cached; every worker appends to the one DIR/results.jsonl under its lock).
`--subjects-file F` runs the config's grid on the subjects of F instead (e.g. more subjects drawn by
draw_subjects.py, to narrow the verdicts' intervals). `--continue-from DIR` (a sweep folder of a shorter
strength) continues its trainings instead of starting at step 0: the same LoRA, bit for bit, under the toy
recipe's constant learning rate (`steerguide.sweep.cache.seed_from_shorter`). One thread per
process: on 2 busy cores two 1-thread processes sample a small model faster than one 2-thread process
(docs/evaluate.md, "Throughput on a CPU").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path


def run_subjects(
    config_path: str,
    out: str,
    subjects: list[str],
    deadline: str | None = None,
    subjects_file: str | None = None,
    continue_from: list[str] | None = None,
    stop_at: float | None = None,
) -> None:
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from steerguide.sweep import load_config, run_sweep

    torch.set_num_threads(1)
    for lib in (diffusers_logging, transformers_logging):  # our own log lines, not the libraries' bars
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    config = load_config(config_path)
    if subjects_file:
        config = replace(config, benchmark={**config.benchmark, "subjects_file": subjects_file})
    for name in subjects:
        if deadline and time.strftime("%H:%M", time.gmtime()) >= deadline:
            print(
                f"{time.strftime('%H:%M:%S')} past the deadline {deadline} UTC: {name} and later subjects "
                "not started",
                flush=True,
            )
            return
        if stop_at is not None and time.time() >= stop_at:
            print(f"{time.strftime('%H:%M:%S')} past the stop time: {name} and later subjects not started",
                  flush=True)
            return
        t0 = time.perf_counter()
        one = replace(config, benchmark={**config.benchmark, "subjects": [name]})
        stats = run_sweep(one, out, continue_from=continue_from or (), log=lambda line: print(line, flush=True))
        print(
            f"{time.strftime('%H:%M:%S')} {name}: {stats.written} new rows ({stats.done_before} done before) "
            f"in {time.perf_counter() - t0:.0f} s, sampling {stats.images_per_second:.1f} images/s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--subjects", help="comma-separated subset (default: the config's)")
    parser.add_argument("--subjects-file", help="run the grid on this subjects file's subjects (YAML)")
    parser.add_argument(
        "--continue-from", action="append", metavar="DIR",
        help="a sweep folder whose shorter trainings of the same recipe are continued (repeatable)",
    )
    parser.add_argument("--deadline", help="HH:MM (UTC): start no subject after this time")
    parser.add_argument("--stop-at", type=float, help="start no subject after this time (seconds since the epoch)")
    parser.add_argument("--worker-subjects", help=argparse.SUPPRESS)  # internal: one worker's share
    args = parser.parse_args()
    for folder in args.continue_from or ():
        if not Path(folder).is_dir():
            parser.error(f"--continue-from {folder}: no such sweep folder")
    if args.worker_subjects is not None:
        run_subjects(
            args.config, args.out, args.worker_subjects.split(","), args.deadline, args.subjects_file,
            args.continue_from, args.stop_at,
        )
        return

    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.sweep import load_config

    config = load_config(args.config)
    spec = dict(config.benchmark)
    if args.subjects:
        spec["subjects"] = args.subjects.split(",")
    if args.subjects_file:
        spec["subjects_file"] = args.subjects_file
    names = [s.name for s in load_benchmark(spec).subjects]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                args.config,
                "--out",
                args.out,
                "--worker-subjects",
                ",".join(names[k :: args.workers]),
                *(["--deadline", args.deadline] if args.deadline else []),
                *(["--stop-at", str(args.stop_at)] if args.stop_at else []),
                *(["--subjects-file", args.subjects_file] if args.subjects_file else []),
                *[a for d in args.continue_from or () for a in ("--continue-from", d)],
            ],
            env=env,
        )
        for k in range(min(args.workers, len(names)))
    ]
    codes = [w.wait() for w in workers]
    if any(codes):
        sys.exit(f"a worker failed (exit codes {codes})")


if __name__ == "__main__":
    from steerguide.errors import UserError

    try:
        main()
    except UserError as e:  # a bad config or subjects file: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
