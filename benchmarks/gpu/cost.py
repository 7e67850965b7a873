"""The GPU run's cost table: ms per sampling step of each method next to CFG, at real denoiser sizes.

Random weights at the SD 1.5 and SDXL UNet configurations (the tiny text encoders and autoencoder of
`steerguide.testing`: the denoiser is what costs), 1 and 4 prompts (2 and 8 CFG rows), PG at ω = 0.5, w = 5:

  cfg-full        CFG on the full fine-tune (a plain UNet: what the base model costs)
  pg-full-2pass   PG on the full fine-tune, two half-batch calls (θ_ω swapped in for the null half)
  pg-full-1pass   PG on the full fine-tune, one call over both weight sets (vmap over [θ_ω; θ_ft])
  cfg-lora        CFG on the LoRA personalization (an unmerged peft LoRA, rank 8, on the attention)
  pg-lora         PG on the LoRA, one batched pass with per-row LoRA scales
  naive-3pass     PG the naive way on the LoRA: D_ft(c), D_ft(∅), D_pre(∅) in three passes

The full fine-tune moves every UNet tensor (as DreamBooth does), so the one-pass path stacks all of them.
Each ratio is against CFG on the same personalization (cfg-full for *-full, cfg-lora for the rest).
Time per step: CUDA events around the whole pipeline call (the text encoders and the scheduler are
negligible next to the UNet), divided by the steps; medians of interleaved rounds (the order reversed
every other round), after one warm-up round. On CPU (`--smoke`) the wall clock.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

METHODS = ["cfg-full", "pg-full-2pass", "pg-full-1pass", "cfg-lora", "pg-lora", "naive-3pass"]
SCALE, OMEGA = 5.0, 0.5

SDXL_UNET_CONFIG = dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (2.6 B parameters)
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)


@dataclass(frozen=True)
class Family:
    """One denoiser configuration of the table: how to build its pipeline and its native latent side."""

    name: str
    latent: int  # native latent side (64: a 512² image for SD 1.5; 128: 1024² for SDXL)
    smoke_latent: int


FAMILIES = {
    "sd15": Family("SD 1.5 UNet (860 M), 512² (64×64 latents)", 64, 8),
    "sdxl": Family("SDXL UNet (2.6 B), 1024² (128×128 latents)", 128, 8),
    # "flux": the Flux transformer configuration goes here once issue 25 (pipeline families) has landed:
    # a `Family` and a branch in `build_pipeline`; the methods and the timing need no change.
}


def build_pipeline(family: str, smoke: bool, device: str, dtype: torch.dtype):
    """A pipeline of `family` with random weights: tiny everywhere with `smoke`, else the real denoiser
    configuration beside one-layer text encoders of the real widths and the tiny autoencoder."""
    from steerguide.testing import SD15_UNET_CONFIG, _clip_config, _vae, build_pipeline, write_clip_tokenizer

    if smoke:
        return build_pipeline(family).to(device, dtype)
    from diffusers import (
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_clip_tokenizer(tmp)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)

    def encoder(cls, hidden, heads, projection):
        config = _clip_config(vocab, hidden=hidden, projection_dim=projection)
        config.num_hidden_layers, config.num_attention_heads = 1, heads
        return cls(config)

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    torch.manual_seed(0)
    with torch.device(device):  # initialize on the device: the SDXL UNet's random init is slow on a CPU
        if family == "sd15":
            pipe = StableDiffusionPipeline(
                vae=_vae(), text_encoder=encoder(CLIPTextModel, 768, 12, 768), tokenizer=tokenizer,
                unet=UNet2DConditionModel(**SD15_UNET_CONFIG), scheduler=scheduler, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False,
            )
        elif family == "sdxl":
            pipe = StableDiffusionXLPipeline(
                vae=_vae(scaling_factor=0.13025), text_encoder=encoder(CLIPTextModel, 768, 12, 768),
                text_encoder_2=encoder(CLIPTextModelWithProjection, 1280, 20, 1280), tokenizer=tokenizer,
                tokenizer_2=tokenizer, unet=UNet2DConditionModel(**SDXL_UNET_CONFIG), scheduler=scheduler,
                add_watermarker=False,
            )
        else:
            raise ValueError(f"unknown family {family!r}")
    return pipe.to(device, dtype)


def personalizations(pipe, folder: Path):
    """(LoRA pipeline and personalization, full fine-tune pipeline and personalization) on `pipe`'s base.

    The full fine-tune shares the text encoders and autoencoder, with its own UNet: the base's weights
    each moved by noise (θ_ft), θ_pre kept by the `ParameterDelta`, as `load_personalization` would for a
    fine-tuned folder (built in memory: saving 2.6 B parameters would take longer than the table).
    """
    import copy

    from steerguide.loading import load_personalization
    from steerguide.personalization import Personalization
    from steerguide.testing import save_random_lora
    from steerguide.weak import ParameterDelta

    unet = copy.deepcopy(pipe.unet)
    pre = {name: p.detach().clone() for name, p in unet.named_parameters()}
    generator = torch.Generator(unet.device).manual_seed(2)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype))
    full_pipe = type(pipe)(**{**pipe.components, "unet": unet})
    full_pipe.set_progress_bar_config(disable=True)
    full = Personalization(kind="full", source="random", denoiser_delta=ParameterDelta(unet, pre))
    lora_folder = save_random_lora(pipe, folder / "lora", rank=8, seed=1)
    pipe.set_progress_bar_config(disable=True)
    lora = load_personalization(pipe, lora_folder)
    return (pipe, lora), (full_pipe, full)


class NaiveThreePass:
    """PG the naive way: D_ft(x, c), D_ft(x, ∅) and D_pre(x, ∅) in three passes of half the CFG rows (the
    LoRA disabled for the third), ω applied to the outputs; any UNet's extra inputs split with the rows."""

    def __init__(self, pipe, omega: float) -> None:
        self.pipe, self.omega = pipe, omega
        self.original = pipe.unet.forward

    def __call__(self, sample, timestep, encoder_hidden_states, **kwargs):  # named: `guided` binds them
        from steerguide.one_batch import _split

        inputs = dict(sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)
        null, cond = _split(inputs, sample.shape[0])
        prompt = self.original(**{**cond, "return_dict": False})[0]
        ft_null = self.original(**{**null, "return_dict": False})[0]
        self.pipe.disable_lora()
        try:
            pre_null = self.original(**{**null, "return_dict": False})[0]
        finally:
            self.pipe.enable_lora()
        return (torch.cat([pre_null + self.omega * (ft_null - pre_null), prompt]),)


def _timer(device: str):
    """() -> stop(): seconds since the call; CUDA events on a GPU (synchronized at the stop)."""
    if device.startswith("cuda"):
        def start():
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()

            def stop():
                end.record()
                end.synchronize()
                return begin.elapsed_time(end) / 1e3

            return stop

        return start

    def start():
        begin = time.perf_counter()
        return lambda: time.perf_counter() - begin

    return start


def runner(method: str, lora, full, prompts: list[str], steps: int, side: int, device: str):
    """A function that samples once with `method` and returns the seconds per step."""
    from steerguide.denoiser import guided
    from steerguide.guidance import GuidanceConfig

    pipe, personal = full if "full" in method else lora
    config = GuidanceConfig("cfg", SCALE) if method.startswith("cfg") or method == "naive-3pass" else (
        GuidanceConfig("pg", SCALE, omega=OMEGA))
    passes = {"pg-full-1pass": 1, "pg-full-2pass": 2}.get(method)
    start = _timer(device)

    def once() -> float:
        if passes is not None:
            personal.denoiser_delta.passes = passes
        if method == "naive-3pass":
            pipe.unet.forward = NaiveThreePass(pipe, OMEGA)
        try:
            with torch.no_grad(), guided(pipe, personal, config):
                stop = start()
                pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=SCALE, height=side,
                     width=side, output_type="latent",
                     generator=torch.Generator(device).manual_seed(0))
                return stop() / steps
        finally:
            if method == "naive-3pass":
                del pipe.unet.forward
            if passes is not None:
                personal.denoiser_delta.passes = "auto"

    return once


def _attempt(runs: dict, errors: dict[str, str], method: str, label: str, log) -> float:
    """One sampling; a method that fails (out of memory, an op vmap cannot batch) is left out of the rest
    of the table with its error, instead of losing the whole table."""
    if method in errors:
        return math.nan
    try:
        return runs[method]()
    except Exception as e:  # noqa: BLE001 - reported in the table
        first = str(e).splitlines()[0][:160] if str(e) else ""
        errors[method] = f"{type(e).__name__}: {first}"
        log(f"{label} {method} failed: {errors[method]}")
        return math.nan


def measure(family: str, batches: list[int], *, smoke: bool, device: str, dtype: torch.dtype, steps: int,
            rounds: int, warmups: int, log=print) -> list[dict]:
    """Rows {family, prompts, method, ms_per_step, ratio, rounds} for each batch size of `family`."""
    spec = FAMILIES[family]
    latent = spec.smoke_latent if smoke else spec.latent
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = build_pipeline(family, smoke, device, dtype)
        lora, full = personalizations(base, Path(tmp))
        side = latent * base.vae_scale_factor
        for n in batches:
            prompts = [f"sks dog {i}" for i in range(n)]  # within the tiny tokenizers' 16
            runs = {m: runner(m, lora, full, prompts, steps, side, device) for m in METHODS}
            errors: dict[str, str] = {}

            def attempt(m: str, runs=runs, errors=errors, label=f"{family} ×{n}") -> float:
                return _attempt(runs, errors, m, label, log)

            for _ in range(warmups):
                for m in METHODS:
                    attempt(m)
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            for r in range(rounds):
                for m in METHODS if r % 2 == 0 else METHODS[::-1]:
                    times[m].append(attempt(m))
            medians = {m: math.nan if m in errors else statistics.median(v) for m, v in times.items()}
            for m in METHODS:
                ref = "cfg-full" if "full" in m else "cfg-lora"
                rows.append({"family": family, "prompts": n, "method": m, "ms_per_step": 1e3 * medians[m],
                             "ratio": medians[m] / medians[ref], "against": ref, "rounds": times[m],
                             "error": errors.get(m)})
            log(f"{family} ×{n}: " + ", ".join(f"{m} {1e3 * medians[m]:.1f} ms" for m in METHODS))
        del lora, full, base
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def render(rows: list[dict], header: str, tiny: bool = False) -> str:
    """The table as markdown: one line per family and batch, ms per step and × CFG per method."""
    lines = [header, "", "| configuration | prompts (CFG rows) | " + " | ".join(METHODS) + " |",
             "| --- | ---: |" + " ---: |" * len(METHODS)]
    keys = sorted({(r["family"], r["prompts"]) for r in rows}, key=lambda k: (list(FAMILIES).index(k[0]), k[1]))
    for family, n in keys:
        cells = {r["method"]: r for r in rows if (r["family"], r["prompts"]) == (family, n)}
        name = f"{family}, tiny (smoke)" if tiny else FAMILIES[family].name
        lines.append(f"| {name} | {n} ({2 * n}) | " + " | ".join(
            f"failed: {cells[m]['error']}" if cells[m].get("error") else
            f"{cells[m]['ms_per_step']:.1f} ms ({cells[m]['ratio']:.3f}×)" for m in METHODS) + " |")
    lines.append("| Flux transformer | — | slot kept for issue 25 (pipeline families): not measured yet |"
                 + " |" * (len(METHODS) - 1))
    lines += ["", "(× against CFG on the same personalization: cfg-full for *-full, cfg-lora for the rest)"]
    return "\n".join(lines)
