"""`train(config)`: one accelerate loop for the three methods; they differ only in what is trainable
(`lora.setup`, `dreambooth.setup`, `custom_diffusion.setup`) and in how the result is saved.

The loop follows diffusers' train_dreambooth*.py examples: VAE latents, DDPM noise at a uniform
timestep, the base model's prediction type as target, optional prior-preservation and min-SNR
weighting; `accelerate launch` runs it on several GPUs unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from steerguide import limits
from steerguide.errors import SteerguideWarning, UserError
from steerguide.files import check_writable, versions
from steerguide.progress import bar as progress_bar
from steerguide.train import custom_diffusion, dreambooth, lora
from steerguide.train.base import (
    Base,
    encode,
    load_base,
    time_ids,
    token_pieces,
    tokenize,
    training_note,
)
from steerguide.train.config import IDENTITY_FIELDS, TrainConfig
from steerguide.train.data import PersonalizationDataset, ensure_class_images, load_images
from steerguide.train.methods import Trainable
from steerguide.train.validation import grid, sample

METHOD_MODULES: dict[str, ModuleType] = {
    "lora": lora,
    "dreambooth": dreambooth,
    "custom-diffusion": custom_diffusion,
}
CHECKPOINTS = "checkpoints"
CLASS_IMAGES = "class_images"


class TrainWarning(SteerguideWarning):
    """Something the user should know that does not stop training (the CLI prints it on one line)."""


class TrainState:
    """Progress that must survive a restart; saved in every checkpoint (`register_for_checkpointing`)."""

    def __init__(self) -> None:
        self.step, self.losses, self.seconds, self.resumed_from = 0, [], 0.0, []

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "losses": list(self.losses),
            "seconds": self.seconds,
            "resumed_from": self.resumed_from,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.losses = int(state["step"]), list(state["losses"])
        self.seconds, self.resumed_from = float(state["seconds"]), list(state["resumed_from"])


class _Notes(list):
    """Warnings of this run: all kept for train.json, shown once (by the main process)."""

    def __init__(self, show: bool):
        super().__init__()
        self.show = show

    def warn(self, message: str) -> None:
        self.append(message)
        if self.show:
            warnings.warn(message, TrainWarning, stacklevel=3)


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints `out/checkpoints/step-N`, oldest first (half-written `*.tmp` ones excluded)."""
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [
        p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _check_out(out: Path, config: TrainConfig, notes: _Notes) -> tuple[Path | None, bool]:
    """Check `--out`; returns the checkpoint to resume from (if any) and whether to clear the folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    found = checkpoints(out)
    if config.resume and found:
        check_writable(out)
        return found[-1], False
    entries = list(out.iterdir()) if out.exists() else []
    ours = {CHECKPOINTS, CLASS_IMAGES}
    if config.resume and all(p.name in ours for p in entries):  # e.g. killed before the first checkpoint
        check_writable(out)
        if entries or out.exists():
            notes.warn(f"--resume: no checkpoint in {out / CHECKPOINTS} yet; starting from step 0")
        return None, False
    if entries:
        check_writable(out)
        if not config.overwrite:
            hint = "pass --overwrite to replace it" + (
                "" if config.resume else ", or --resume to continue it"
            )
            raise UserError(f"--out {out} exists and is not empty; {hint}")
        if not ((out / "train.json").exists() or (out / CHECKPOINTS).is_dir()):
            raise UserError(
                f"--overwrite: refusing to delete {out}: it does not look like a steerguide training output"
            )
    check_writable(out)  # e.g. /proc/x, or a folder of someone else's: one line before any work
    return None, bool(entries)


def _identity(config: TrainConfig, images: list, base: Base) -> dict:
    digest = hashlib.sha1()
    for _, image in images:
        digest.update(f"{image.size}".encode())
        digest.update(image.tobytes())
    values = config.to_json()
    return {
        **{k: values[k] for k in IDENTITY_FIELDS},
        "base": str(base.path.resolve()),
        "images_sha1": digest.hexdigest(),
    }


def _check_identity(out: Path, identity: dict) -> None:
    saved = (
        json.loads((out / CHECKPOINTS / "run.json").read_text())
        if (out / CHECKPOINTS / "run.json").exists()
        else {}
    )
    changed = [k for k in identity if k in saved and saved[k] != identity[k]]
    if changed:
        k = changed[0]
        raise UserError(
            f"--resume: the checkpoints in {out / CHECKPOINTS} were trained with {k}={saved[k]!r}, "
            f"not {identity[k]!r}; use the same settings, or --overwrite to start again"
        )


def _install_checkpoint_hooks(accelerator, trainable: Trainable) -> None:
    """Checkpoints hold only the trainable parameters (a LoRA, not the whole UNet), by name."""
    from safetensors.torch import load_file, save_file

    def trained_params(model) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}

    def save_hook(models, weights, output_dir) -> None:
        if accelerator.is_main_process:
            for i, model in enumerate(models):
                state = {n: p.detach().contiguous() for n, p in trained_params(model).items()}
                save_file(state, os.path.join(output_dir, f"trainable_{i}.safetensors"))
        weights.clear()  # accelerate saves nothing else of the models

    def load_hook(models, input_dir) -> None:
        for i, model in enumerate(models):
            params = trained_params(model)
            state = load_file(os.path.join(input_dir, f"trainable_{i}.safetensors"))
            if set(state) != set(params):
                raise UserError(
                    f"--resume: checkpoint {input_dir} does not match this model's trainable parameters"
                )
            with torch.no_grad():
                for name, value in state.items():
                    params[name].copy_(value)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _save_checkpoint(accelerator, out: Path, step: int, keep: int) -> None:
    """`save_state` into `step-N.tmp`, then rename: a kill during the write leaves the last one intact."""
    folder = out / CHECKPOINTS
    tmp, final = folder / f"step-{step}.tmp", folder / f"step-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old)


def _word_replace(prompt: str, token: str, new: str) -> str:
    return " ".join(new if w == token else w for w in prompt.split(" "))


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Personalize `config.base` on `config.images`; returns the output folder (see docs/train.md)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params, compute_snr

    called = time.perf_counter()
    config.check()
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # not under a distributed launcher
        # accelerate keeps its settings in process-wide singletons; a second run in the same process
        # (a sweep) may ask for another precision or accumulation (accelerate's own tests reset them so).
        AcceleratorState._reset_state()
        GradientState._reset_state()
    try:
        accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation,
            project_config=ProjectConfiguration(project_dir=str(out)),
        )
    except ValueError as e:  # e.g. fp16 on a machine without a GPU
        raise UserError(f"--mixed-precision {config.mixed_precision}: {e}") from None
    notes = _Notes(show=accelerator.is_local_main_process)
    resume_from, clear = _check_out(out, config, notes)
    accelerator.wait_for_everyone()  # every process has looked at --out before it is cleared
    if clear and accelerator.is_main_process:
        shutil.rmtree(out)
    images = load_images(config.images)  # cheap input errors first, before the model loads
    base = load_base(config.base)
    method = METHOD_MODULES[config.method]
    resolution = config.resolution or base.native_resolution
    limits.image_side_for_model("--resolution", resolution, base.native_resolution)
    note = training_note(config.base, config.extra or {})
    if note:
        notes.warn(note)
    if not config.class_noun and config.instance_prompt is None:
        notes.warn(
            f"no --class-noun: training on {config.prompt()!r}; name what the subject is "
            "(--class-noun dog) so that the prompt ties the token to a kind of thing"
        )
    identity = _identity(config, images, base)
    if resume_from is not None:
        _check_identity(out, identity)

    pieces = token_pieces(base.tokenizers[0], config.token)
    if len(pieces) > 1:
        becomes = (
            f"Custom Diffusion adds {config.token!r} to the tokenizer as one new token"
            if config.method == "custom-diffusion"
            else "the subject is bound to that sequence (a rare one-piece token such as 'sks' binds better)"
        )
        notes.warn(
            f"token {config.token!r} is split by the tokenizer into {len(pieces)} pieces "
            f"({' '.join(pieces)}); {becomes}"
        )

    # Prior preservation: class images from the untouched base model, generated before any training.
    prompt = config.prompt()
    class_images = None
    if config.prior_preservation:
        class_dir = Path(config.class_data_dir) if config.class_data_dir else out / CLASS_IMAGES
        if accelerator.is_main_process:
            base.pipe.to(accelerator.device)
            ensure_class_images(
                base.pipe,
                class_dir,
                config.class_images,
                config.prior_prompt(),
                resolution,
                config.seed,
                config.validation_inference_steps,
                config.validation_guidance_scale,
                progress=progress,
            )
        accelerator.wait_for_everyone()
        class_images = [im for _, im in load_images(class_dir)[: config.class_images]]

    set_seed(config.seed)
    trainable = method.setup(base, config)
    prompt_token = trainable.prompt_token
    prompt = _word_replace(prompt, config.token, prompt_token)
    class_prompt = config.prior_prompt()

    if config.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        for encoder, trained in zip(base.text_encoders, trainable.text_encoders_trained, strict=True):
            if trained:
                enable = (
                    getattr(encoder, "activation_checkpointing_enable", None)
                    or encoder.gradient_checkpointing_enable
                )
                enable()

    # Frozen weights in the compute dtype, trainable ones in fp32 (diffusers' `cast_training_params`).
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    vae_dtype = torch.float32 if base.arch == "sdxl" else weight_dtype  # the SDXL VAE overflows in fp16
    dtypes = [(base.unet, weight_dtype), (base.vae, vae_dtype)]
    for encoder in base.text_encoders:
        # A trained token embedding (Custom Diffusion) feeds fp32 into the encoder: keep it all in fp32.
        dtypes.append(
            (encoder, torch.float32 if encoder.get_input_embeddings().weight.requires_grad else weight_dtype)
        )
    for module, dtype in dtypes:
        module.to(accelerator.device, **({} if dtype == module.dtype else {"dtype": dtype}))
    cast_training_params(trainable.modules, dtype=torch.float32)
    params = [p for m in trainable.modules for p in m.parameters() if p.requires_grad]

    noise_scheduler = DDPMScheduler.from_pretrained(base.path, subfolder="scheduler")
    prediction_type = noise_scheduler.config.prediction_type
    embeddings = {id(p) for p in trainable.embeddings}
    groups = [
        {"params": [p for p in params if id(p) not in embeddings], "lr": config.lr},
        {"params": [p for p in params if id(p) in embeddings], "lr": config.embedding_lr},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=config.lr, weight_decay=config.adam_weight_decay
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_steps * accelerator.num_processes,
    )

    per_step = config.batch_size * config.gradient_accumulation * accelerator.num_processes
    dataset = PersonalizationDataset(
        [im for _, im in images],
        config.max_steps * per_step,
        resolution,
        config.crop,
        config.random_flip,
        config.seed,
        class_images,
    )
    # Its own generator: creating an iterator draws a base seed, which must not come from the global RNG
    # (a resumed run creates one more iterator than an uninterrupted one).
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.dataloader_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    prepared = accelerator.prepare(*trainable.modules, optimizer, loader, lr_scheduler)
    wrapped, optimizer, loader, lr_scheduler = list(prepared[:-3]), *prepared[-3:]
    encoders = list(base.text_encoders)
    for i, trained in enumerate(trainable.text_encoders_trained):
        if trained:
            encoders[i] = wrapped[1 + sum(trainable.text_encoders_trained[:i])]
    unet = wrapped[0]

    state = TrainState()
    accelerator.register_for_checkpointing(state)
    _install_checkpoint_hooks(accelerator, trainable)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state.resumed_from.append(state.step)
        trainable.after_step()

    instance_ids, class_ids = tokenize(base.tokenizers, prompt), tokenize(base.tokenizers, class_prompt)
    for tokenizer in base.tokenizers[:1]:
        if len(tokenizer(prompt).input_ids) > tokenizer.model_max_length:
            notes.warn(
                f"the instance prompt {prompt!r} is longer than the tokenizer's "
                f"{tokenizer.model_max_length} tokens; it is truncated"
            )
    frozen_text = not any(trainable.text_encoders_trained)
    if frozen_text:  # the prompts never change: encode them once
        with torch.no_grad():
            cached = {
                "instance": encode(encoders, instance_ids, base.arch),
                "class": encode(encoders, class_ids, base.arch),
            }

    def prompt_embeddings(which: str, n: int):
        if frozen_text:
            embeds, pooled = cached[which]
        else:
            embeds, pooled = encode(encoders, instance_ids if which == "instance" else class_ids, base.arch)
        return embeds.expand(n, -1, -1), None if pooled is None else pooled.expand(n, -1)

    def training_step(batch: dict) -> torch.Tensor:
        pixels, sizes, crops = batch["pixels"], batch["original_size"], batch["crop_top_left"]
        n = pixels.shape[0]
        embeds, pooled = prompt_embeddings("instance", n)
        if config.prior_preservation:
            pixels = torch.cat([pixels, batch["class_pixels"]])
            sizes = torch.cat([sizes, batch["class_original_size"]])
            crops = torch.cat([crops, batch["class_crop_top_left"]])
            class_embeds, class_pooled = prompt_embeddings("class", n)
            embeds = torch.cat([embeds, class_embeds])
            pooled = None if pooled is None else torch.cat([pooled, class_pooled])
        with torch.no_grad():
            posterior = base.vae.encode(pixels.to(vae_dtype)).latent_dist
            latents = posterior.sample() if config.latents == "sample" else posterior.mode()
            shift = getattr(base.vae.config, "shift_factor", None) or 0.0
            latents = ((latents - shift) * base.vae.config.scaling_factor).to(weight_dtype)
        noise = torch.randn_like(latents)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn(
                latents.shape[:2] + (1, 1), device=latents.device
            )
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        ).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        added = None
        if base.arch == "sdxl":
            added = {"text_embeds": pooled, "time_ids": time_ids(sizes, crops, resolution).to(latents.device)}
        pred = unet(noisy, timesteps, embeds.to(weight_dtype), added_cond_kwargs=added, return_dict=False)[0]
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = latents
        prior_loss = 0.0
        if config.prior_preservation:
            pred, pred_prior = pred.chunk(2)
            target, target_prior = target.chunk(2)
            timesteps = timesteps.chunk(2)[0]
            prior_loss = F.mse_loss(pred_prior.float(), target_prior.float())
        if config.snr_gamma is None:
            loss = F.mse_loss(pred.float(), target.float())
        else:  # min-SNR-γ (Hang et al. 2023), as in diffusers' examples
            snr = compute_snr(noise_scheduler, timesteps)
            weights = torch.clamp(snr, max=config.snr_gamma)
            weights = weights / (snr + 1) if prediction_type == "v_prediction" else weights / snr
            loss = (
                F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)) * weights
            ).mean()
        return loss + config.prior_loss_weight * prior_loss

    def validate(name: Path) -> None:
        with accelerator.autocast():
            images_ = sample(
                base.pipe,
                _word_replace(config.validation_prompt or config.prompt(), config.token, prompt_token),
                config.validation_images,
                config.validation_inference_steps,
                config.validation_guidance_scale,
                resolution,
                config.seed,
            )
        name.parent.mkdir(parents=True, exist_ok=True)
        grid(images_).save(name)

    if accelerator.is_main_process:  # written once the run is set up, so a setup error leaves --out as it was
        (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            (out / CHECKPOINTS / "run.json").write_text(json.dumps(identity, indent=2))
    base.pipe.to(accelerator.device)
    for module in wrapped:
        module.train()
    start_step, started = state.step, time.perf_counter()
    seconds_before = state.seconds
    shown = progress and accelerator.is_local_main_process
    with progress_bar(shown, extra=("loss {task.fields[loss]}",)) as bar:
        task = bar.add_task(f"{config.method}", total=config.max_steps, completed=state.step, loss="-")
        if state.step < config.max_steps:
            batches = accelerator.skip_first_batches(loader, state.step * config.gradient_accumulation)
            step_loss = 0.0
            for batch in batches:
                with accelerator.accumulate(*wrapped):
                    loss = training_step(batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    trainable.after_step()
                step_loss += accelerator.gather(loss.detach()).mean().item() / config.gradient_accumulation
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                state.losses.append(step_loss)
                state.seconds = seconds_before + time.perf_counter() - started
                bar.update(task, completed=state.step, loss=f"{step_loss:.4f}")
                step_loss = 0.0
                if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                    _save_checkpoint(accelerator, out, state.step, config.checkpoints_total_limit)
                if (
                    config.validation_every
                    and state.step % config.validation_every == 0
                    and accelerator.is_main_process
                ):
                    validate(out / "validation" / f"step-{state.step}.png")
                if state.step >= config.max_steps:
                    break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained_seconds = time.perf_counter() - started
        for module in wrapped:
            module.eval()
        files = method.save(base, config, trainable, out)
        if config.validation_images:
            validate(out / "validation.png")
            files.append("validation.png")
        record = {
            "method": config.method,
            "base": str(base.path.resolve()),
            "arch": base.arch,
            "token": prompt_token,
            "user_token": config.token,
            "token_pieces": pieces,
            "class_noun": config.class_noun,
            "instance_prompt": prompt,
            "class_prompt": class_prompt if config.prior_preservation else None,
            "prediction_type": prediction_type,
            "resolution": resolution,
            "steps": state.step,
            "losses": state.losses,
            "wall_seconds": state.seconds,
            "wall_seconds_this_run": trained_seconds,
            "total_seconds_this_run": time.perf_counter() - called,  # loading, class images, saving included
            "seconds_per_step": trained_seconds / max(1, state.step - start_step),
            "resumed_from": state.resumed_from,
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "trainable_parameters": sum(p.numel() for p in params),
            "images": [name for name, _ in images],
            "files": files,
            "warnings": notes,
            "versions": versions(),
            "config": config.to_json(),
        }
        (out / "train.json").write_text(json.dumps(record, indent=2, default=str))
    accelerator.end_training()
    return out
