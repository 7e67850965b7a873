"""Pretrain the toy world's base text-to-image model, a stock diffusers Stable Diffusion pipeline.

Stages, each cached under the work folder so a rerun resumes: render a dataset of grammar scenes
(never subjects), train the VAE, encode the dataset to latents, then train the UNet on the latents under
a frozen, randomly initialized CLIP text encoder. The VAE downsamples only 2x (32x32 -> 16x16x4): at 8x8
the small shapes and the subjects' two-color looks blurred past recognition. The UNet uses v-prediction
with an unweighted loss, a cosine schedule and extra high-noise steps, where layout (position) is decided.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from steerguide.toyworld.render import render_array
from steerguide.toyworld.tokenizer import MAX_LENGTH, build_tokenizer
from steerguide.toyworld.world import Spec, random_caption, random_spec

Progress = Callable[[str, int, int, dict], None]  # (stage, done, total, metrics)


@dataclass
class TrainConfig:
    seed: int = 0
    n_scenes: int = 120_000
    n_train: int = 60_000  # scenes of the dataset that are encoded and trained on
    vae_steps: int = 2400
    vae_batch: int = 24
    vae_diverse: float = 0.25  # share of each VAE batch that is random instances, so subjects survive it
    vae_val: int = 512  # the first scenes, held out of the VAE's training to measure it
    unet_steps: int = 4500
    unet_batch: int = 48
    lr: float = 8e-4
    warmup: int = 300
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    word_init_std: float = 1.0  # CLIP's default is 0.02
    high_noise_share: float = 0.5  # of the first phase (see Phase)
    high_noise_from: int = 800  # where the object's place is decided (the input shows little of it)
    # Refinement: the same UNet trained on, mostly at low and middle noise, where small shapes are drawn
    # (after the first phase, large shapes were right 96% of the time and small ones 47%).
    refine_steps: int = 4000
    refine_lr: float = 3e-4
    refine_warmup: int = 100
    refine_high_noise_share: float = 0.1
    checkpoint_every: int = 500
    threads: int = 2
    stop_after: int | None = None  # stop each phase early at this step (for quick trials)

    def phases(self) -> list[Phase]:
        first = Phase("unet", self.unet_steps, self.lr, self.warmup, self.high_noise_share, 0)
        refine = Phase("refine", self.refine_steps, self.refine_lr, self.refine_warmup,
                       self.refine_high_noise_share, 10, decay_from_start=True)
        return [first, refine] if self.refine_steps else [first]


@dataclass
class Phase:
    """One phase of UNet training: its own optimizer, learning-rate schedule, EMA and random streams."""

    name: str
    steps: int
    lr: float
    warmup: int
    high_noise_share: float  # share of each batch drawn from the high-noise steps only
    seed_offset: int
    decay_from_start: bool = False  # cosine over the whole phase, the warm-up only ramping it in

    def lr_factor(self, step: int) -> float:
        """Linear warm-up and a cosine decay to 5%; a phase that starts from trained weights decays at once."""
        def cosine(frac: float) -> float:
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))

        if self.decay_from_start:
            return min(1.0, (step + 1) / self.warmup) * cosine(step / self.steps)
        if step < self.warmup:
            return (step + 1) / self.warmup
        return cosine((step - self.warmup) / max(1, self.steps - self.warmup))


def vae_config() -> dict:
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 32, "layers_per_block": 1,
        "block_out_channels": (32, 64), "norm_num_groups": 32, "mid_block_add_attention": False,
        "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2,
    }


def unet_config(cross_dim: int = 128) -> dict:
    """Cross-attention at 8x8, 4x4, 2x2 and the middle, where layout is decided; plain convolutions at
    16x16, where attention would triple the cost of a training step on the CPU. The 2x2 level gives each
    quadrant its own cell, which zero padding marks apart: the UNet has no other sense of where it is."""
    return {
        "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "block_out_channels": (32, 64, 128, 128), "cross_attention_dim": cross_dim, "attention_head_dim": 8,
        "down_block_types": ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        "up_block_types": ("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        "norm_num_groups": 32,
    }


def text_config(vocab_size: int, bos: int, eos: int) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=128,
                          bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", clip_sample=False)


def sample_scheduler() -> DPMSolverMultistepScheduler:
    """The scheduler shipped for sampling: DPM-Solver++ on the training schedule, starting at t = 999."""
    return DPMSolverMultistepScheduler.from_config(
        train_scheduler().config, timestep_spacing="trailing", algorithm_type="dpmsolver++", solver_order=2,
        steps_offset=1)


# ---- stage 1: the dataset ------------------------------------------------------------------------

def _render_chunk(args: tuple[int, int, int]) -> tuple[np.ndarray, list[dict]]:
    seed, start, stop = args
    images, specs = [], []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        spec = random_spec(rng)
        images.append(render_array(spec, seed=int(rng.integers(2**31))))
        specs.append(asdict(spec))
    return np.stack(images), specs


def render_dataset(n: int, seed: int, workers: int = 2, progress: Progress | None = None):
    """`n` random grammar scenes: uint8 images (n, 32, 32, 3) and their specs (as dicts)."""
    chunk = 2000
    jobs = [(seed, s, min(s + chunk, n)) for s in range(0, n, chunk)]
    images, specs = [], []
    # Workers ignore Ctrl-C: the main process stops them; else each would print its own traceback.
    with Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        for imgs, sp in pool.imap(_render_chunk, jobs):
            images.append(imgs)
            specs += sp
            if progress:
                progress("render", len(specs), n, {})
    return np.concatenate(images), specs


def spec_from_dict(d: dict) -> Spec:
    second = tuple(d["second"]) if d["second"] is not None else None
    return Spec(**{**d, "second": second})


# ---- stage 2: the VAE ----------------------------------------------------------------------------

def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _instance_batch(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random object instances (random looks in random colors, as the fidelity judge trains on)."""
    from steerguide.toyworld.fidelity import random_instance, render_view

    return np.stack([render_view(*random_instance(rng), rng) for _ in range(n)])


def train_vae(images: np.ndarray, cfg: TrainConfig, progress: Progress | None = None) -> AutoencoderKL:
    """Train on grammar scenes plus a share of random instances in looks the grammar never shows, so
    that the VAE keeps any two-color look (personal subjects included, which it never sees)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 4)
    vae = AutoencoderKL(**vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=cfg.vae_steps, pct_start=0.1)
    g = torch.Generator().manual_seed(cfg.seed)
    n_val = cfg.vae_val
    n_new = round(cfg.vae_batch * cfg.vae_diverse)
    for step in range(cfg.vae_steps):
        idx = torch.randint(n_val, len(images), (cfg.vae_batch - n_new,), generator=g).numpy()
        x = to_tensor(np.concatenate([images[idx], _instance_batch(n_new, rng)]))
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mode()).sample  # the UNet trains on modes; sampling here halved the early PSNR gain
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and step % 50 == 0:
            progress("vae", step, cfg.vae_steps, {"loss": loss.item()})
    vae.eval()
    with torch.no_grad():
        x = to_tensor(images[:n_val])
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        mse = F.mse_loss((rec + 1) / 2, (x + 1) / 2).item()
        std = torch.cat([vae.encode(to_tensor(images[i:i + 256])).latent_dist.mode()
                         for i in range(0, min(4096, len(images)), 256)]).std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    if progress:
        progress("vae", cfg.vae_steps, cfg.vae_steps, {"val_psnr": -10 * math.log10(mse), "latent_std": std})
    return vae


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, progress: Progress | None = None) -> torch.Tensor:
    """Scaled latent means of every image, (n, 4, 16, 16), stored in fp16."""
    out = []
    for i in range(0, len(images), 512):
        z = vae.encode(to_tensor(images[i:i + 512])).latent_dist.mode() * vae.config.scaling_factor
        out.append(z.half())
        if progress:
            progress("latents", min(i + 512, len(images)), len(images), {})
    return torch.cat(out)


# ---- stage 3: UNet + text encoder ---------------------------------------------------------------

def build_pipeline(vae, text_encoder, unet, tokenizer) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sample_scheduler(), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)


def new_unet_and_text_encoder(cfg: TrainConfig, tokenizer) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    torch.manual_seed(cfg.seed + 1)
    text_encoder = CLIPTextModel(text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    # The text encoder stays as initialized (frozen, as Stable Diffusion keeps its CLIP), with word
    # embeddings wide enough that each word stays itself through the random layers. Trained jointly, it
    # folded the position words into their context (the UNet could not use them yet, the other words it
    # could): position stayed at chance in every such run, whereas a frozen one lets the UNet learn it.
    torch.nn.init.normal_(text_encoder.get_input_embeddings().weight, std=cfg.word_init_std)
    return UNet2DConditionModel(**unet_config()), text_encoder


def fit_unet(pipe: StableDiffusionPipeline, latents: torch.Tensor, specs: list[Spec], cfg: TrainConfig,
             phase: Phase, checkpoint: Callable[[StableDiffusionPipeline, int], None] | None = None,
             progress: Progress | None = None) -> tuple[StableDiffusionPipeline, list[tuple[int, float]]]:
    """Train `pipe`'s UNet for one phase under its frozen text encoder, from its current weights.

    Returns a new pipeline with the phase's EMA weights (the EMA starts at the phase's starting weights)
    and the loss curve."""
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    text_encoder.requires_grad_(False).eval()
    unet.train()
    noise_sched = train_scheduler()
    params = list(unet.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.01)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, phase.lr_factor)
    alphas = noise_sched.alphas_cumprod
    rng = np.random.default_rng(cfg.seed + phase.seed_offset + 2)
    g = torch.Generator().manual_seed(cfg.seed + phase.seed_offset + 3)
    curve: list[tuple[int, float]] = []
    running = 0.0

    def ema_pipeline() -> StableDiffusionPipeline:
        un = UNet2DConditionModel.from_config(unet.config)
        un.load_state_dict({k: e for k, e in zip(unet.state_dict(), ema, strict=True)})
        te = CLIPTextModel(text_encoder.config)
        te.load_state_dict(text_encoder.state_dict())
        return build_pipeline(pipe.vae, te.eval(), un.eval(), tokenizer)

    n_steps = min(phase.steps, cfg.stop_after or phase.steps)
    for step in range(n_steps):
        idx = rng.integers(0, len(latents), cfg.unet_batch)
        captions = ["" if rng.random() < cfg.caption_dropout else random_caption(specs[i], rng) for i in idx]
        ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                        return_tensors="pt").input_ids
        x0 = latents[torch.from_numpy(idx)].float()
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=g)
        n_high = round(phase.high_noise_share * cfg.unet_batch)
        t[:n_high] = torch.randint(cfg.high_noise_from, noise_sched.config.num_train_timesteps, (n_high,),
                                   generator=g)
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        xt = a * x0 + s * noise
        target = a * noise - s * x0  # v-prediction
        with torch.no_grad():
            cond = text_encoder(ids)[0]
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            curve.append((step, running))
            if progress:
                progress(phase.name, step, phase.steps, {"loss": running, "lr": sched.get_last_lr()[0]})
        if checkpoint and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < n_steps:
            checkpoint(ema_pipeline(), step + 1)
    curve.append((n_steps, running))
    return ema_pipeline(), curve


def drop_local_paths(folder: Path) -> None:
    """Remove the `_name_or_path` that diffusers writes into the config of a component loaded from disk
    (here: the cache), so that the shipped folder names no path of the machine it was trained on."""
    for config in folder.glob("*/config.json"):
        d = json.loads(config.read_text())
        if d.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def check_outputs(out: Path, work: Path) -> None:
    """Both folders writable, `out` new, empty or a pipeline folder (replaced): before minutes of work."""
    from steerguide.files import check_writable
    from steerguide.run_folder import Refusals, RunFolder

    check_writable(out, "--out")
    check_writable(work, "--work")
    pipeline = RunFolder(out, None, what="--out", marks=("model_index.json",))  # an earlier one is replaced
    pipeline.decide(
        Refusals(foreign="--out {out} is not empty and holds no pipeline; give a new or empty folder")
    )


def train_base(out: Path, work: Path, cfg: TrainConfig, progress: Progress | None = None) -> dict:
    """Run every stage (resuming cached ones from `work`) and save the pipeline to `out`."""
    check_outputs(Path(out), Path(work))
    torch.set_num_threads(cfg.threads)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    tag = f"seed{cfg.seed}_n{cfg.n_scenes}"
    data_file = work / f"dataset_{tag}.npz"
    if data_file.exists():
        data = np.load(data_file, allow_pickle=False)
        images, specs = data["images"], json.loads(str(data["specs"]))
    else:
        t0 = time.time()
        images, specs = render_dataset(cfg.n_scenes, cfg.seed, workers=cfg.threads, progress=progress)
        np.savez(data_file, images=images, specs=json.dumps(specs))
        timings["render_s"] = time.time() - t0
    images, specs = images[:cfg.n_train], [spec_from_dict(d) for d in specs[:cfg.n_train]]

    vae_dir = work / f"vae16m_{tag}_{cfg.vae_steps}x{cfg.vae_batch}_diverse{cfg.vae_diverse}"
    if (vae_dir / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(vae_dir)
    else:
        t0 = time.time()
        vae = train_vae(images, cfg, progress)
        vae.save_pretrained(vae_dir)
        timings["vae_s"] = time.time() - t0
    vae.eval().requires_grad_(False)

    latent_file = vae_dir / f"latents_{cfg.n_train}.pt"
    if latent_file.exists():
        latents = torch.load(latent_file)
    else:
        t0 = time.time()
        latents = encode_latents(vae, images, progress)
        torch.save(latents, latent_file)
        timings["latents_s"] = time.time() - t0

    tokenizer = build_tokenizer()
    pipe = None
    curves = {}
    for i, phase in enumerate(cfg.phases()):
        # Each phase's result, so a rerun resumes after it; named by every phase up to it, since a phase
        # continues from the one before.
        done = work / "_".join([phase.name, tag, *(str(q.steps) for q in cfg.phases()[:i + 1])])
        if (done / "model_index.json").exists():
            pipe = StableDiffusionPipeline.from_pretrained(done, vae=vae, tokenizer=tokenizer)
            continue
        if pipe is None:  # the first phase starts from a new UNet
            unet, text_encoder = new_unet_and_text_encoder(cfg, tokenizer)
            pipe = build_pipeline(vae, text_encoder, unet, tokenizer)

        def checkpoint(p: StableDiffusionPipeline, step: int, phase=phase) -> None:
            p.save_pretrained(work / f"checkpoint_{tag}_{phase.name}_{step}")

        t0 = time.time()
        pipe, curves[phase.name] = fit_unet(pipe, latents, specs, cfg, phase, checkpoint, progress)
        timings[f"{phase.name}_s"] = time.time() - t0
        if cfg.stop_after is None:
            pipe.save_pretrained(done)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    drop_local_paths(out)
    log = {"config": asdict(cfg), "timings": timings, "loss_curves": curves}
    (work / f"train_log_{tag}.json").write_text(json.dumps(log, indent=1))
    return log


def main() -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unet-steps", type=int, default=TrainConfig.unet_steps)
    p.add_argument("--refine-steps", type=int, default=TrainConfig.refine_steps)
    p.add_argument("--refine-lr", type=float, default=TrainConfig.refine_lr)
    p.add_argument("--refine-high-noise-share", type=float, default=TrainConfig.refine_high_noise_share)
    p.add_argument("--stop-after", type=int, default=TrainConfig.stop_after)
    args = p.parse_args()

    def progress(stage, done, total, metrics):
        print(f"{time.strftime('%H:%M:%S')} {stage} {done}/{total} {json.dumps(metrics)}", flush=True)

    cfg = TrainConfig(seed=args.seed, unet_steps=args.unet_steps, refine_steps=args.refine_steps,
                      refine_lr=args.refine_lr, refine_high_noise_share=args.refine_high_noise_share,
                      stop_after=args.stop_after)
    train_base(args.out, args.work, cfg, progress)


if __name__ == "__main__":
    main()
