"""What PG costs in ComfyUI: passes per step and time per step, ours against CFGGuider and ComfyUI's hooks.

    python benchmarks/comfyui_cost.py                      # the real SD 1.5 UNet (860 M, random weights)
    python benchmarks/comfyui_cost.py --unet tiny --latent 8 --rounds 1 --steps 2   # a smoke run
    python benchmarks/comfyui_cost.py --flops              # operations per step instead of time

ComfyUI comes from `--comfyui` (default `$STEERGUIDE_COMFYUI`, else ../shared/comfyui), imported in this
process on CPU (steerguide.comfyui.harness). The UNet is built by ComfyUI from SD 1.5's configuration
with seeded random weights; the LoRA (rank `--rank`, kohya layout, on every attention projection, the
feed-forward output and the transformer's proj_in/proj_out) is read from a file by each graph, as
ComfyUI reads one from its `loras` folder. All graphs sample with SamplerCustomAdvanced + euler at
cfg 7.5 from the same noise, at SD 1.5's native 64×64 latents (a 512 px image):
  cfg         ComfyUI's CFGGuider on the model with the LoRA merged by ComfyUI's LoraLoader
  pg-lora     steerguide's PersonalizationGuider, ω = 0.5 (one batched pass, LoRA unmerged, row-scaled)
  hooks       ComfyUI's own PG graph: CreateHookLora ω = 0.5 on the negative, 1 on the positive, CFGGuider

Passes: UNet calls per step and rows per call, counted by a forward hook on ComfyUI's UNet. Time: each
round runs every graph once (cfg, pg-lora, hooks, in turn), after `--warmup` uncounted rounds; a run's time per step
is from the end of its first step to the end of its last over steps − 1 (model loading and patching
before the first step left out; the hooks graph's re-patching between its two passes a step counted), and
per graph the median over rounds. `--clock cpu` (default, with `--threads 1`) counts this process's
CPU time, the compute each graph needs, which other jobs on a shared machine disturb less than wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

GRAPHS = ("cfg", "pg-lora", "hooks")


def build(unet: str, rank: int, folder: Path):
    """ComfyUI's SD 1.5 model (ModelPatcher) with random weights, and the LoRA's file name in `folder`."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import folder_paths

    from steerguide.comfyui import testing

    config = testing.SD15_UNET if unet == "sd15" else testing.TINY_UNET
    model_config = comfy.model_detection.model_config_from_unet_config(dict(config))
    assert type(model_config).__name__ == "SD15", type(model_config).__name__
    model = model_config.get_model({}, "model.diffusion_model.")
    testing.fill_random_(model.diffusion_model, seed=0)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    unet_sd = {f"model.diffusion_model.{k}": v for k, v in model.diffusion_model.state_dict().items()}
    testing.write_lora(folder / "bench-lora.safetensors", unet_sd, rank=rank, alpha=rank)
    folder_paths.folder_names_and_paths["loras"] = ([str(folder)], {".safetensors"})
    return patcher, "bench-lora.safetensors"


class Counter:
    """Each UNet call: its rows, and the clock when it returned."""

    def __init__(self, patcher, tick):
        self.calls: list[int] = []
        self.ends: list[float] = []
        unet = patcher.model.diffusion_model
        unet.register_forward_pre_hook(lambda m, a: self.calls.append(a[0].shape[0]))
        unet.register_forward_hook(lambda m, a, out: self.ends.append(tick()))

    def clear(self):
        self.calls.clear()
        self.ends.clear()

    def seconds_per_step(self, steps: int) -> float:
        """From the end of the first step to the end of the last: loading and patching before the first
        step are left out (a one-off cost that longer runs amortize), per-step re-patching is not."""
        per_step = len(self.ends) // steps
        return (self.ends[-1] - self.ends[per_step - 1]) / (steps - 1)


def flops_per_step(patcher, custom, guiders, sampler, sigmas, noise, latent_image) -> dict[str, int]:
    """Floating-point operations inside the UNet calls of one sampling step per graph (torch's
    FlopCounterMode: matmuls and convolutions; weight patching outside the calls is left out), a count no
    other job on the machine can disturb."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = patcher.model.diffusion_model
    total = [0]
    active: list = []

    def enter(module, args):
        active.append(FlopCounterMode(display=False))
        active[-1].__enter__()

    def leave(module, args, output):
        mode = active.pop()
        mode.__exit__(None, None, None)
        total[0] += mode.get_total_flops()

    handles = [unet.register_forward_pre_hook(enter), unet.register_forward_hook(leave)]
    out = {}
    try:
        for name in GRAPHS:
            total[0] = 0
            with torch.inference_mode():
                custom.SamplerCustomAdvanced().sample(noise, guiders[name](), sampler, sigmas[:2], latent_image)
            out[name] = total[0]
    finally:
        for h in handles:
            h.remove()
    return out


def measure(unet: str = "sd15", latent: int = 64, steps: int = 4, rounds: int = 3, rank: int = 16,
            omega: float = 0.5, cfg: float = 7.5, clock: str = "cpu", warmup: int = 1,
            flops_only: bool = False) -> dict:
    import comfy_extras.nodes_custom_sampler as custom
    import comfy_extras.nodes_hooks as hooks
    import nodes

    import steerguide.comfyui.nodes as ours

    tick = time.process_time if clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        patcher, lora = build(unet, rank, Path(tmp))
        g = torch.Generator().manual_seed(0)
        positive = [[torch.randn(1, 77, 768, generator=g), {}]]
        negative = [[torch.randn(1, 77, 768, generator=g), {}]]
        merged = nodes.LoraLoader().load_lora(patcher, None, lora, 1.0, 0.0)[0]
        personalized = ours.PersonalizationLoRALoader().load(patcher, lora)[0]
        props = hooks.ConditioningSetProperties()
        hooked_pos = props.set_properties(positive, 1.0, "default",
                                          hooks=hooks.CreateHookLora().create_hook(lora, 1.0, 0.0)[0])[0]
        hooked_neg = props.set_properties(negative, 1.0, "default",
                                          hooks=hooks.CreateHookLora().create_hook(lora, omega, 0.0)[0])[0]
        guiders = {
            "cfg": lambda: custom.CFGGuider().get_guider(merged, positive, negative, cfg)[0],
            "pg-lora": lambda: ours.PersonalizationGuiderNode().get_guider(
                personalized, positive, negative, cfg, omega, "constant", 1.0, 0.0, 1.0)[0],
            "hooks": lambda: custom.CFGGuider().get_guider(patcher, hooked_pos, hooked_neg, cfg)[0],
        }
        sampler = custom.KSamplerSelect().get_sampler("euler")[0]
        sigmas = custom.BasicScheduler().get_sigmas(patcher, "normal", steps, 1.0)[0]
        noise = custom.RandomNoise().get_noise(0)[0]
        latent_image = {"samples": torch.zeros(1, 4, latent, latent)}
        if flops_only:
            return {"unet": unet, "latent": latent, "rank": rank,
                    "flops_per_step": flops_per_step(patcher, custom, guiders, sampler, sigmas, noise, latent_image)}
        counter = Counter(patcher, tick)
        times: dict[str, list[float]] = {name: [] for name in GRAPHS}
        passes: dict[str, list[int]] = {}
        for r in range(1 - warmup, rounds + 1):  # rounds < 1 warm up (first loads, hook weight caches)
            for name in GRAPHS:
                counter.clear()
                with torch.inference_mode():
                    custom.SamplerCustomAdvanced().sample(noise, guiders[name](), sampler, sigmas, latent_image)
                passes[name] = list(counter.calls)
                per_step = counter.seconds_per_step(steps)
                if r > 0:
                    times[name].append(per_step)
                print(f"round {r} {name}: {per_step:.3f} s/step", file=sys.stderr, flush=True)
    per_step = {name: statistics.median(t) for name, t in times.items()}
    return {
        "unet": unet, "latent": latent, "steps": steps, "rounds": rounds, "warmup": warmup, "rank": rank,
        "clock": clock,
        "threads": torch.get_num_threads(),
        "passes_per_step": {n: len(p) / steps for n, p in passes.items()},
        "rows_per_pass": {n: sorted(set(p)) for n, p in passes.items()},
        "seconds_per_step": per_step,
        "all_seconds_per_step": times,
        "pg_over_cfg": per_step["pg-lora"] / per_step["cfg"],
        "hooks_over_cfg": per_step["hooks"] / per_step["cfg"],
        "pg_over_hooks": per_step["pg-lora"] / per_step["hooks"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=None, help="ComfyUI's source folder")
    parser.add_argument("--unet", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64: SD 1.5's native 512 px)")
    parser.add_argument("--steps", type=int, default=4, help="at least 2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--flops", action="store_true",
                        help="only count the floating-point operations of one step per graph (no timing)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.rounds < 1:
        parser.error("--steps must be at least 2 and --rounds at least 1")
    for name, low in (("rank", 1), ("latent", 8), ("warmup", 0), ("threads", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be at least {low}, got {getattr(args, name)}")
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: its folder {args.out.parent} does not exist")
    torch.set_num_threads(args.threads)
    from steerguide.comfyui.harness import use_comfyui

    use_comfyui(args.comfyui)
    result = measure(args.unet, args.latent, args.steps, args.rounds, args.rank, clock=args.clock,
                     warmup=args.warmup, flops_only=args.flops)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.flops:
        f = result["flops_per_step"]
        print("\nGFLOP per step: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in f.items())
              + f"\npg-lora / cfg = {f['pg-lora'] / f['cfg']:.4f}", file=sys.stderr)
        return result
    s = result["seconds_per_step"]
    print(f"\npasses per step: {result['passes_per_step']}\n"
          f"s/step ({args.clock} clock, {result['threads']} thread(s)): cfg {s['cfg']:.3f}, "
          f"pg-lora {s['pg-lora']:.3f}, hooks {s['hooks']:.3f}\n"
          f"pg-lora / cfg = {result['pg_over_cfg']:.3f}, hooks / cfg = {result['hooks_over_cfg']:.3f}",
          file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
