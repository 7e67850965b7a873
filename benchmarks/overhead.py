"""What PG costs next to CFG: per-step time and peak memory, measured in one run on the same model.

    python benchmarks/overhead.py                       # CPU, SD 1.5 architecture, 5.8 M-parameter UNet
    python benchmarks/overhead.py --model sd15-full     # the real SD 1.5 UNet (860 M, random weights)
    python benchmarks/overhead.py --model sd15-full --device cuda --resolution 128 --steps 10
    python benchmarks/overhead.py --model flux          # FLUX.1-dev's transformer width, 1+1 blocks

The test pipelines' autoencoder downsamples by 2 (SD 1.5's by 8): `--resolution 128` gives SD 1.5's
native 64×64 latents (a 512 px image); the header prints the latent size.

Methods (all at w = 5, same prompts, seeds and scheduler):
  cfg-lora / cfg-full   CFG on the LoRA personalization / on a full fine-tune (the LoRA fused, then every
                        tensor of the UNet perturbed, as after DreamBooth: all of them differ)
  pg-lora               PG, ω = 0.5, one batched pass with per-row LoRA scales
  pg-lora-linear        PG, ω linear 0 → 1 (a new ω every step)
  pg-full               PG, ω = 0.5, θ_ω materialized once; the device's default path (`passes = "auto"`)
  pg-full-2pass         the same in two half-batch calls, θ_ω swapped in for the null half
  pg-full-1pass         the same in one call over both weight sets (vmap over stacked [θ_ω; θ_ft])
  pg-full-linear        PG, ω linear 0 → 1 on the full fine-tune: θ_ω materialized anew at every step
  ag-lora               autoguidance with the pretrained model (LoRA scale 0 on the first half)
  naive-3pass           PG the naive way: D_ft(c), D_ft(∅) and D_pre(∅) in three passes, mixed in output space

`--model flux`: a FluxPipeline whose transformer has FLUX.1-dev's real configuration (3072 wide, 24 heads,
4096-wide text) but `--flux-layers` blocks (double,single; default 1,1), random weights. Its true CFG makes
two transformer calls a step; PG runs the negative call at θ_ω (adapter scale ω, or θ_ω swapped in).

Time: the median over interleaved rounds of (sampling time / steps), so that drift of the machine hits
every method alike. `--clock cpu` counts the process's CPU time instead of wall time: with `--threads 1`
that is the compute each method needs, unaffected by other jobs on a shared machine. Memory: each method
also runs in a fresh process that polls its resident memory (CPU) or reads the allocator's peak (CUDA);
the peak above the memory held before the models were loaded is reported, and its difference to CFG on
the same personalization.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

METHODS = [
    "cfg-lora",
    "pg-lora",
    "pg-lora-linear",
    "ag-lora",
    "naive-3pass",
    "cfg-full",
    "pg-full",
    "pg-full-linear",
    "pg-full-2pass",
    "pg-full-1pass",
]
PROMPTS = [
    "a photo of a sks dog on the beach",
    "a sks dog in the snow",
    "a sks dog wearing a red hat",
    "a watercolor painting of a sks dog",
    "a sks dog next to a cat",
    "a sks dog in a bucket",
    "a sks dog on a skateboard",
    "a sks dog at night",
]


def build_models(
    folder: Path, channels: tuple[int, ...], rank: int, full_size: bool = False
) -> dict[str, Path]:
    from steerguide.loading import load_pipeline
    from steerguide.testing import save_pipeline, save_random_lora

    base = save_pipeline("sd15", folder / "base", unet_channels=channels, full_size_unet=full_size)
    pipe = load_pipeline(base)
    lora = save_random_lora(pipe, folder / "lora", rank=rank, seed=1)
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # DreamBooth moves every tensor, not only the LoRA's
        for p in pipe.unet.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=generator))
    pipe.save_pretrained(folder / "full", safe_serialization=True)
    del pipe
    return {"base": base, "lora": lora, "full": folder / "full"}


FLUX_METHODS = ["cfg-lora", "pg-lora", "ag-lora", "cfg-full", "pg-full"]


def build_flux_models(folder: Path, layers: tuple[int, int], rank: int) -> dict[str, Path]:
    """A real-width Flux base, a random LoRA on its attention and MLPs, and a full fine-tune (every tensor)."""
    from steerguide.testing import build_flux, save_random_lora

    pipe = build_flux(layers=layers, real_width=True)
    pipe.save_pretrained(folder / "base", safe_serialization=True)
    targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "proj_mlp", "proj_out")  # fmt: skip
    lora = save_random_lora(pipe, folder / "lora", rank=rank, seed=1, target_modules=targets)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # DreamBooth moves every tensor
        for p in pipe.transformer.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=generator))
    pipe.transformer.save_pretrained(folder / "full", safe_serialization=True)
    del pipe
    return {"base": folder / "base", "lora": lora, "full": folder / "full"}


class NaiveThreePass:
    """PG computed the naive way: three denoiser passes of B rows per step, ω applied to the outputs."""

    def __init__(self, pipe, omega: float) -> None:
        self.pipe, self.omega = pipe, omega
        self.original = pipe.unet.forward

    def __call__(self, sample, timestep, encoder_hidden_states, **kwargs):
        n = sample.shape[0] // 2
        cond = self.original(sample[n:], timestep, encoder_hidden_states[n:], **kwargs)[0]
        ft_null = self.original(sample[:n], timestep, encoder_hidden_states[:n], **kwargs)[0]
        self.pipe.disable_lora()
        try:
            pre_null = self.original(sample[:n], timestep, encoder_hidden_states[:n], **kwargs)[0]
        finally:
            self.pipe.enable_lora()
        return (torch.cat([pre_null + self.omega * (ft_null - pre_null), cond]),)


def _clock(args):
    return time.process_time if args.clock == "cpu" else time.perf_counter


def make_runner(method: str, models: dict[str, Path], args, loaded: dict | None = None):
    """Load what `method` needs; return a function that samples once and returns the seconds taken.

    `loaded` shares one pipeline per personalization kind between methods (the methods leave it as
    they found it); without it each method loads its own.
    """
    from steerguide.block import denoiser_of
    from steerguide.guidance import GuidanceConfig
    from steerguide.loading import load_personalization, load_pipeline
    from steerguide.sampling import sample

    kind = "full" if "full" in method else "lora"
    loaded = {} if loaded is None else loaded
    if kind not in loaded:
        pipe = load_pipeline(models["base"], device=args.device)
        loaded[kind] = (pipe, load_personalization(pipe, models[kind]))
    pipe, personal = loaded[kind]
    configs = {
        "cfg-lora": GuidanceConfig("cfg", args.scale),
        "cfg-full": GuidanceConfig("cfg", args.scale),
        "pg-lora": GuidanceConfig("pg", args.scale, omega=0.5),
        "pg-full": GuidanceConfig("pg", args.scale, omega=0.5),
        "pg-full-2pass": GuidanceConfig("pg", args.scale, omega=0.5),
        "pg-full-1pass": GuidanceConfig("pg", args.scale, omega=0.5),
        "pg-lora-linear": GuidanceConfig("pg", args.scale, omega=0.0, omega_schedule="linear:1.0"),
        "pg-full-linear": GuidanceConfig("pg", args.scale, omega=0.0, omega_schedule="linear:1.0"),
        "ag-lora": GuidanceConfig("ag", args.scale, omega=0.0),
        "naive-3pass": GuidanceConfig("cfg", args.scale),
    }
    config = configs[method]
    prompts = PROMPTS[: args.prompts]

    peak_held = [0]
    build_seconds = [0.0, 0]  # time spent materializing θ_ω, and sampling runs timed

    def timed_weights(delta, clock, attribute="weights", cache="_cache"):
        """`delta.weights` (or `.stacked`) that adds the time of every θ_ω it builds (not cached hits) to
        build_seconds."""
        weights = getattr(type(delta), attribute)

        def timed(omega):
            held = getattr(delta, cache)
            fresh = held is None or held[0] != omega
            start = clock()
            out = weights(delta, omega)
            if fresh and omega not in (0.0, 1.0):
                build_seconds[0] += clock() - start
            return out

        return timed

    def held_mib() -> float:
        """Peak of the tensors held to realize θ_ω during sampling: θ_pre of the differing tensors and the
        materialized θ_ω (0 for LoRA), polled at every denoiser call."""
        return peak_held[0] / 2**20

    def poll_held(*_):
        delta = personal.denoiser_delta
        if delta is not None:
            peak_held[0] = max(peak_held[0], delta.held_bytes)

    def once() -> float:
        if method == "naive-3pass":
            pipe.unet.forward = NaiveThreePass(pipe, 0.5)
        clock = _clock(args)
        hook = denoiser_of(pipe).register_forward_hook(poll_held)
        delta = personal.denoiser_delta
        if delta is not None:
            delta.weights = timed_weights(delta, clock)
            delta.stacked = timed_weights(delta, clock, "stacked", "_stacked")
            delta.passes = {"pg-full-1pass": 1, "pg-full-2pass": 2}.get(method, "auto")
        build_seconds[1] += 1
        try:
            start = clock()
            sample(
                pipe,
                personal,
                config,
                prompts,
                steps=args.steps,
                height=args.resolution,
                width=args.resolution,
                seed=0,
                progress=False,
                output_type="latent",
                batch_size=len(prompts),
                **({"max_sequence_length": 16} if args.model == "flux" else {}),
            )
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return clock() - start
        finally:
            hook.remove()
            if delta is not None:
                del delta.weights, delta.stacked
                delta.passes = "auto"
            if method == "naive-3pass":
                del pipe.unet.forward

    once.held_mib = held_mib
    once.build_ms_per_step = lambda: 1e3 * build_seconds[0] / max(1, build_seconds[1]) / args.steps
    return once


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_child(method: str, models: dict[str, Path], args) -> None:
    """Run one method once in this (fresh) process; print its peak memory above the pre-loading level."""
    import threading

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        make_runner(method, models, args)()
        print(json.dumps({"method": method, "peak_mib": torch.cuda.max_memory_allocated() / 2**20}))
        return
    before = _rss_mib()
    peak = [before]
    done = threading.Event()

    def poll() -> None:  # the resident set, every millisecond, while the method loads and samples
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    make_runner(method, models, args)()
    done.set()
    watcher.join()
    print(json.dumps({"method": method, "peak_mib": max(peak[0], _rss_mib()) - before}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--model",
        choices=["toy", "sd15-full", "flux"],
        default="toy",
        help="toy: the SD 1.5 architecture at --channels widths; sd15-full: the real SD 1.5 UNet "
        "configuration (860 M parameters, random weights), methods sharing one pipeline per kind, "
        "memory from the exact tensor count only",
    )
    parser.add_argument("--steps", type=int, default=None, help="default 10 (toy), 2 (sd15-full)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per batch (CFG rows = 2×); 4 / 2")
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="image size; latents are half of it here (128: SD 1.5's native 64×64 latents); 64 / 16",
    )
    parser.add_argument("--channels", default="64,128,128", help="UNet block widths")
    parser.add_argument("--flux-layers", default="1,1", help="--model flux: double-stream,single-stream blocks")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--warmups",
        type=int,
        default=1,
        help="untimed samplings per method first (0 where one step takes minutes: a first call's extra cost "
        "is then negligible)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--methods", default=None, help=f"default {','.join(METHODS)}; flux {','.join(FLUX_METHODS)}")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or this process's CPU time (robust on a shared machine with --threads 1)",
    )
    parser.add_argument("--skip-memory", action="store_true", help="time only (no per-method processes)")
    parser.add_argument("--models", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmups < 0:
        parser.error(f"--warmups must be at least 0, got {args.warmups}")
    flux = args.model == "flux"
    full_size = args.model == "sd15-full" or flux
    defaults = {"steps": (10, 2, 2), "prompts": (4, 2, 1), "resolution": (64, 16, 32)}
    for name, (toy, full, flux_default) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, flux_default if flux else full if full_size else toy)
    if args.methods is None:
        args.methods = ",".join(FLUX_METHODS if flux else METHODS)
    if full_size:
        args.skip_memory = True  # a fresh process per method would load 3.4 GB each time
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from diffusers.utils import logging as dl

    dl.disable_progress_bar()
    channels = tuple(int(c) for c in args.channels.split(","))
    methods = args.methods.split(",")

    if args.memory_child:
        peak_memory_child(args.memory_child, {k: Path(v) for k, v in json.loads(args.models).items()}, args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        if flux:
            layers = tuple(int(n) for n in args.flux_layers.split(","))
            models = build_flux_models(Path(tmp), layers, args.rank)
        else:
            models = build_models(Path(tmp), channels, args.rank, full_size=full_size)
        loaded: dict = {} if full_size else None
        runners = {m: make_runner(m, models, args, loaded) for m in methods}
        pipe = next(iter(loaded.values()))[0] if loaded else None
        if pipe is None:
            from steerguide.loading import load_pipeline

            pipe = load_pipeline(models["base"])
        from steerguide.block import denoiser_of

        unet_params = sum(p.numel() for n, p in denoiser_of(pipe).named_parameters() if "lora_" not in n)
        latent = args.resolution // pipe.vae_scale_factor
        del pipe
        name = "SD 1.5 UNet configuration" if full_size else "SD 1.5 architecture"
        if flux:
            name = f"FLUX.1-dev transformer width, {args.flux_layers} blocks, true CFG (two calls a step)"
        print(
            f"{name}, "
            f"denoiser {unet_params / 1e6:.1f} M parameters, LoRA rank {args.rank}, "
            f"{args.prompts} prompts ({2 * args.prompts} CFG rows), {args.resolution}px ({latent}×{latent} latents), {args.steps} steps, "
            f"device {args.device}, torch threads {torch.get_num_threads()}, {args.clock} clock",
            flush=True,
        )
        for _ in range(args.warmups):
            for once in runners.values():
                once()  # warm-up: first calls pay for kernel selection and allocator growth
        times: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(args.rounds):
            order = methods if r % 2 == 0 else methods[::-1]
            for m in order:
                times[m].append(runners[m]() / args.steps)
                # each figure as it comes: a long run stopped early still leaves what it measured
                print(f"round {r + 1}: {m} {times[m][-1] * 1e3:.1f} ms/step", flush=True)
        held = {m: runners[m].held_mib() for m in methods}
        builds = {m: runners[m].build_ms_per_step() for m in methods}
        peaks = {m: float("nan") for m in methods}
        for m in [] if args.skip_memory else methods:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    m,
                    "--models",
                    json.dumps({k: str(v) for k, v in models.items()}),
                    *sys.argv[1:],
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            peaks[m] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]

    print(
        f"{'method':<16}{'ms/step':>10}{'× CFG':>9}{'θ_ω build':>11}{'θ_ω MiB':>10}{'RSS MiB':>10}{'Δ vs CFG':>11}"
    )
    for m in methods:
        ref = "cfg-full" if "full" in m else "cfg-lora"
        step = statistics.median(times[m])
        ratio = step / statistics.median(times[ref]) if ref in times else float("nan")
        delta = peaks[m] - peaks[ref] if ref in peaks else float("nan")
        build = builds[m]
        print(
            f"{m:<16}{step * 1e3:>10.2f}{ratio:>9.3f}{build:>11.2f}{held[m]:>10.1f}{peaks[m]:>10.1f}{delta:>+11.1f}"
        )
    print(
        "(× CFG: ratio of medians to CFG on the same personalization, cfg-full for *-full, else cfg-lora;\n"
        " θ_ω build: ms per step spent materializing θ_ω = lerp(θ_pre, θ_ft, ω), part of ms/step, once per\n"
        " sampling run for a constant ω, every step for a scheduled one;\n"
        " θ_ω MiB: tensors held to realize θ_ω, counted exactly; RSS MiB: peak resident memory above the\n"
        " pre-loading level in a fresh process, polled every ms, and its difference to CFG)"
    )


if __name__ == "__main__":
    main()
