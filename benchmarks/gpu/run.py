"""The GPU run: the cost table and the toy DreamBench at scale, in one command, within a time budget.

    benchmarks/gpu/run.sh [OUT] [--minutes 8] [--work DIR]     # on one CUDA GPU (OUT default: $OUT)
    benchmarks/gpu/run.sh OUT --smoke                          # the same code on CPU at tiny sizes

1. The cost table (`cost.py`): fp16, random weights at the SD 1.5 (512²) and SDXL (1024²) UNet
   configurations, 1 and 4 prompts; CFG, PG-LoRA, PG-full in two passes and in one, the naive three-pass
   PG; CUDA events, medians of 5 interleaved rounds after a warm-up; a slot for the Flux transformer.
2. The toy DreamBench on CUDA (`toy_config.yaml`: the default strength's full grid with PG ω = 0.9 added,
   so that claim (b) is defined, and the interval variant), on subjects drawn by
   `toy_dreambench/draw_subjects.py --n 200 --seed 2026`, taken in draw order by parallel workers (one
   process each, one GPU), no subject started after the budget's stop time, so as many as fit (target
   100+); verdicts (a)-(c) and the interval question with 95% CIs over subjects and their half-widths
   (`toy_dreambench/verdict.py`).

Written to OUT (only these, so that they come back from a device run): summary.md (the commands, both
tables, the verdicts and what it took), cost.json, verdict.json, results.jsonl.gz (every toy row) and
log.txt. The sweep's images and LoRAs stay under --work. A phase that fails is reported in summary.md
and the next still runs; the exit status is then 1. `--smoke`: the same phases on CPU with tiny pipelines,
2 sampling steps, 2 subjects, 1 prompt, w = 5 and a 1-step training (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOY = HERE.parent / "toy_dreambench"
SUBJECTS_DRAWN, SUBJECTS_SEED = 200, 2026
RESERVE_S = 90  # kept back from the toy phase's stop time: subjects under way finish, the verdicts run


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Log:
    """Lines to stdout and OUT/log.txt, each with the seconds since the start."""

    def __init__(self, path: Path) -> None:
        self.start = time.time()
        self.file = path.open("a")

    def __call__(self, line: str) -> None:
        text = f"[{time.time() - self.start:6.0f} s] {line}"
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def smoke_config(path: Path) -> dict:
    """The fixed grid shrunk for the CPU check: the same methods and variants at w = 5, PG ω ∈ {0, 0.5, 0.9},
    one prompt, a one-step training, two sampling steps."""
    import yaml

    config = yaml.safe_load(path.read_text())
    config["benchmark"]["num_prompts"] = 1
    config["personalization"]["train"]["steps"] = 1
    grids = config["guidance"]
    for method in ("cfg", "ag"):
        grids[method]["scale"] = [5.0]
    grids["pg"] = [{**g, "scale": [5.0]} for g in grids["pg"]]
    grids["pg"][0]["omega"] = [0.0, 0.5, 0.9]  # 0.5: the interval variant's own ω guided throughout
    config["sampling"] = {"steps": 2, "batch_size": 64}
    config["device"] = "cpu"
    return config


def cost_phase(args, log) -> tuple[str, list[dict]]:
    import torch

    cost = _module(HERE / "cost.py", "gpu_cost")
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.float16
    steps, rounds, warmups = (1, 1, 0) if args.smoke else (8, 5, 1)
    rows = []
    for family in cost.FAMILIES:
        rows += cost.measure(family, [1, 4], smoke=args.smoke, device=device, dtype=dtype, steps=steps,
                             rounds=rounds, warmups=warmups, log=log)
    header = (f"{'CPU smoke (tiny pipelines, float32)' if args.smoke else 'float16'}, {steps} DDIM steps a "
              f"sampling, median of {rounds} interleaved rounds after {warmups} warm-up, w = {cost.SCALE}, "
              f"ω = {cost.OMEGA}; ms per step")
    return cost.render(rows, header, tiny=args.smoke), rows


def toy_phase(args, log, stop_at: float) -> tuple[str, dict, Path]:
    import yaml

    draw = _module(TOY / "draw_subjects.py", "toy_draw_subjects")
    verdict = _module(TOY / "verdict.py", "toy_verdict")
    from steerguide.toyworld.subjects import subjects_yaml

    work = Path(args.work) / "toy"
    work.mkdir(parents=True, exist_ok=True)
    drawn = draw.draw_subjects(2 if args.smoke else SUBJECTS_DRAWN, SUBJECTS_SEED)
    subjects = work / "subjects.yaml"
    subjects.write_text(f"# draw_subjects.py --n {SUBJECTS_DRAWN} --seed {SUBJECTS_SEED}"
                        f"{' (the first 2: --smoke)' if args.smoke else ''}\n" + subjects_yaml(drawn))
    config_path = work / "config.yaml"
    if args.smoke:
        config_path.write_text(yaml.safe_dump(smoke_config(HERE / "toy_config.yaml"), allow_unicode=True))
    else:
        config_path.write_text((HERE / "toy_config.yaml").read_text())
    sweep = work / "sweep"
    names = [s.name for s in drawn]
    if args.smoke:  # in this process: what a worker does, one subject after another
        import torch
        from diffusers.utils import logging as dl
        from transformers.utils import logging as tl

        threads, levels = torch.get_num_threads(), (dl.get_verbosity(), tl.get_verbosity())
        bars = (dl.is_progress_bar_enabled(), tl.is_progress_bar_enabled())
        try:
            _module(TOY / "run.py", "toy_run").run_subjects(
                str(config_path), str(sweep), names, subjects_file=str(subjects), stop_at=stop_at)
        finally:
            torch.set_num_threads(threads)
            dl.set_verbosity(levels[0])
            tl.set_verbosity(levels[1])
            for lib, on in zip((dl, tl), bars, strict=True):
                lib.enable_progress_bar() if on else lib.disable_progress_bar()
    else:
        command = [sys.executable, str(TOY / "run.py"), str(config_path), "--out", str(sweep), "--workers",
                   str(args.workers), "--subjects-file", str(subjects), "--stop-at", f"{stop_at:.0f}"]
        log("toy DreamBench: " + shlex.join(command))
        with (Path(args.out) / "log.txt").open("a") as sink:
            code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT).returncode
        if code:
            raise RuntimeError(f"toy_dreambench/run.py exited with status {code} (log.txt)")
    rows = verdict.load_rows(sweep)
    result = verdict.analyse(verdict.Table(rows), args.bootstrap)
    done = len(result["subjects"])
    text = (f"{done} of the {len(names)} drawn subjects complete ({len(rows)} rows); bootstrap "
            f"{args.bootstrap} resamples over subjects\n\n{verdict.render(result)}\n\n"
            f"{verdict.summary_table({'default + ω 0.9': result})}")
    return text, verdict._jsonable(result), sweep


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT"), help="folder for the tables (default $OUT)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: check that everything runs")
    parser.add_argument("--minutes", type=float, default=8.0, help="the whole run's budget (default 8)")
    parser.add_argument("--work", default="/tmp/steerguide-gpu-work", help="the toy sweep's images and LoRAs")
    parser.add_argument("--workers", type=int, default=None, help="toy sweep processes (default: cores − 4, 1-12)")
    parser.add_argument("--bootstrap", type=int, default=None, help="verdict resamples (default 2000; smoke 50)")
    parser.add_argument("--phases", default="cost,toy", help="which phases, comma-separated")
    args = parser.parse_args()
    if not args.out:
        parser.error("no output folder: give OUT or set $OUT")
    if args.minutes <= 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    phases = args.phases.split(",")
    if not set(phases) <= {"cost", "toy"}:
        parser.error(f"--phases takes cost and toy, got {args.phases!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"{out} is a file, not a folder")
    args.workers = args.workers or max(1, min(12, (os.cpu_count() or 2) - 4))
    args.bootstrap = args.bootstrap or (50 if args.smoke else 2000)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --smoke for the CPU check")
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "log.txt")
    start = time.time()
    stop_at = start + 60 * args.minutes - RESERVE_S
    import diffusers

    where = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name()
    log(f"{where}; torch {torch.__version__}, diffusers {diffusers.__version__}; budget {args.minutes} min")
    sections = ["# steerguide GPU run" + (" (smoke)" if args.smoke else ""), "",
                f"Device: {where}; torch {torch.__version__}, diffusers {diffusers.__version__}; started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(start))}.", "",
                "    " + shlex.join(["benchmarks/gpu/run.sh", *sys.argv[1:]]), ""]
    took, failed, saved = [], [], {}
    for phase in phases:
        t0 = time.time()
        try:
            if phase == "cost":
                text, rows = cost_phase(args, log)
                saved["cost.json"] = rows
                sections += ["## Cost table", "", text, ""]
            elif stop_at - time.time() < 60:
                sections += ["## Toy DreamBench", "", "not run: less than a minute of the budget left", ""]
            else:
                text, result, sweep = toy_phase(args, log, stop_at)
                saved["verdict.json"] = result
                with (sweep / "results.jsonl").open("rb") as f, gzip.open(out / "results.jsonl.gz", "wb") as g:
                    g.write(f.read())
                sections += ["## Toy DreamBench on CUDA" if not args.smoke else "## Toy DreamBench (smoke)",
                             "", text, ""]
        except Exception as e:  # report it, run the next phase
            failed.append(phase)
            log(f"{phase} failed: {type(e).__name__}: {e}")
            sections += [f"## {phase}: FAILED", "", "```", traceback.format_exc().rstrip(), "```", ""]
        took.append(f"- {phase}: {time.time() - t0:.0f} s")
        log(took[-1][2:])
    for name, value in saved.items():
        (out / name).write_text(json.dumps(value, indent=1, allow_nan=True))
    peak = f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (this process)" if (
        torch.cuda.is_available() and not args.smoke) else ""
    sections += ["## What it took", "", *took, f"- in all: {time.time() - start:.0f} s wall{peak}", ""]
    (out / "summary.md").write_text("\n".join(sections))
    log(f"wrote {out / 'summary.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
