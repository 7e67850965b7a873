"""`steerguide train`: a thin shell over `steerguide.train.train`."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from steerguide.errors import Interrupted, UserError


def _modules(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def train_command(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option("--out", help="Output folder (must be empty or absent, unless --overwrite/--resume)."),
    ],
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="Base model: a diffusers pipeline folder (SD 1.x/2.x, SDXL), or 'toy' (the toy world's, "
            "which knows only toy shapes: for real photos use a real base).",
        ),
    ] = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="Folder of photos of the subject (jpg, png, webp, ...).")
    ] = None,
    token: Annotated[str, typer.Option("--token", help="Rare word bound to the subject.")] = "sks",
    class_noun: Annotated[
        str, typer.Option("--class-noun", help="What the subject is: dog, backpack, ...")
    ] = "",
    method: Annotated[str, typer.Option("--method", help="lora | dreambooth | custom-diffusion.")] = "lora",
    toy: Annotated[
        str | None,
        typer.Option("--toy", help="Toy-world subject: fills base, images, token, prompt and toy defaults."),
    ] = None,
    toy_subjects: Annotated[
        Path | None, typer.Option("--toy-subjects", help="Subjects file (YAML) that --toy looks in.")
    ] = None,
    instance_prompt: Annotated[
        str | None, typer.Option("--instance-prompt", help="Default: 'a photo of TOKEN CLASS'.")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Optimizer steps (default per method: 500/400/250).")
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", "--lr", help="Default per method: 1e-4/5e-6/1e-5.")
    ] = None,
    embedding_learning_rate: Annotated[
        float | None,
        typer.Option(
            "--embedding-learning-rate",
            "--embedding-lr",
            help="Custom Diffusion: the new token's embedding at this rate (default: the learning rate).",
        ),
    ] = None,
    lr_scheduler: Annotated[
        str, typer.Option("--lr-scheduler", help="constant, linear, cosine, ...")
    ] = "constant",
    lr_warmup_steps: Annotated[int, typer.Option("--lr-warmup-steps")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 1,
    gradient_accumulation: Annotated[int, typer.Option("--gradient-accumulation")] = 1,
    max_grad_norm: Annotated[
        float, typer.Option("--max-grad-norm", help="Gradient clipping; 0 turns it off.")
    ] = 1.0,
    snr_gamma: Annotated[
        float | None,
        typer.Option("--snr-gamma", help="Min-SNR loss weighting γ (5 is usual); off by default."),
    ] = None,
    noise_offset: Annotated[float, typer.Option("--noise-offset")] = 0.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank.")] = 4,
    lora_alpha: Annotated[
        float | None, typer.Option("--lora-alpha", help="LoRA alpha (default: the rank).")
    ] = None,
    target_modules: Annotated[
        str, typer.Option("--target-modules", help="UNet modules for LoRA.")
    ] = "to_k,to_q,to_v,to_out.0",
    text_encoder_target_modules: Annotated[
        str, typer.Option("--text-encoder-target-modules")
    ] = "q_proj,k_proj,v_proj,out_proj",
    train_text_encoder: Annotated[bool, typer.Option("--train-text-encoder/--no-train-text-encoder")] = False,
    prior_preservation: Annotated[
        bool, typer.Option("--prior-preservation", help="DreamBooth's class-prior loss.")
    ] = False,
    class_images: Annotated[
        int, typer.Option("--class-images", help="Class images for the prior (generated if short).")
    ] = 100,
    class_data_dir: Annotated[
        Path | None, typer.Option("--class-data-dir", help="Default: OUT/class_images.")
    ] = None,
    class_prompt: Annotated[
        str | None, typer.Option("--class-prompt", help="Default: the instance prompt without the token.")
    ] = None,
    prior_loss_weight: Annotated[float, typer.Option("--prior-loss-weight")] = 1.0,
    resolution: Annotated[
        int | None, typer.Option("--resolution", help="Default: the base model's native resolution.")
    ] = None,
    crop: Annotated[
        str, typer.Option("--crop", help="center | random (after resizing the short side) | resize.")
    ] = "center",
    random_flip: Annotated[bool, typer.Option("--random-flip")] = False,
    latents: Annotated[
        str,
        typer.Option(
            "--latents", help="sample | mode of the VAE posterior (mode: as base models trained on it)."
        ),
    ] = "sample",
    mixed_precision: Annotated[str, typer.Option("--mixed-precision", help="no | fp16 | bf16.")] = "no",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    validation_prompt: Annotated[
        str | None, typer.Option("--validation-prompt", help="Default: the instance prompt.")
    ] = None,
    validation_images: Annotated[
        int, typer.Option("--validation-images", help="Samples in each grid; 0: none.")
    ] = 4,
    validation_every: Annotated[
        int, typer.Option("--validation-every", help="Also a grid every N steps; 0: at the end only.")
    ] = 0,
    validation_inference_steps: Annotated[int, typer.Option("--validation-inference-steps")] = 25,
    validation_guidance_scale: Annotated[float, typer.Option("--validation-guidance-scale")] = 7.5,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help="Checkpoint every N steps; 0: never.")
    ] = 100,
    checkpoints_total_limit: Annotated[
        int, typer.Option("--checkpoints-total-limit", help="Checkpoints kept.")
    ] = 2,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint in --out.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for torch (default: torch's choice).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    stop_when: Annotated[
        str | None,
        typer.Option("--stop-when", help="Train until this rule holds on validation renders, checked at --steps "
                     "and every --check-every steps after: 'calibrated' (toy subjects) or 'dreambench' (real "
                     "photos: DINO and CLIP-T), the calibration criterion. Default: train --steps steps."),
    ] = None,
    check_every: Annotated[int, typer.Option("--check-every", help="With --stop-when: steps between checks.")] = 100,
    judge_dino: Annotated[
        str | None, typer.Option("--judge-dino", help="With --stop-when dreambench: the DINO model (hub id or folder).")
    ] = None,
    judge_clip: Annotated[
        str | None, typer.Option("--judge-clip", help="With --stop-when dreambench: the CLIP model (hub id or folder).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="With --stop-when: the most steps (default: 3 x --steps).")
    ] = None,
) -> None:
    """Personalize a base model on a few photos: LoRA, DreamBooth or Custom Diffusion."""
    from steerguide.train import TrainConfig, TrainWarning, train

    options = dict(  # noqa: C408 (keyword form mirrors TrainConfig)
        out=out,
        token=token,
        class_noun=class_noun,
        method=method,
        instance_prompt=instance_prompt,
        steps=steps,
        learning_rate=learning_rate,
        embedding_learning_rate=embedding_learning_rate,
        lr_scheduler=lr_scheduler,
        lr_warmup_steps=lr_warmup_steps,
        batch_size=batch_size,
        gradient_accumulation=gradient_accumulation,
        max_grad_norm=max_grad_norm,
        snr_gamma=snr_gamma,
        noise_offset=noise_offset,
        seed=seed,
        rank=rank,
        lora_alpha=lora_alpha,
        target_modules=_modules(target_modules),
        text_encoder_target_modules=_modules(text_encoder_target_modules),
        train_text_encoder=train_text_encoder,
        prior_preservation=prior_preservation,
        class_images=class_images,
        class_data_dir=class_data_dir,
        class_prompt=class_prompt,
        prior_loss_weight=prior_loss_weight,
        resolution=resolution,
        crop=crop,
        random_flip=random_flip,
        latents=latents,
        mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing,
        validation_prompt=validation_prompt,
        validation_images=validation_images,
        validation_every=validation_every,
        validation_inference_steps=validation_inference_steps,
        validation_guidance_scale=validation_guidance_scale,
        checkpoint_every=checkpoint_every,
        checkpoints_total_limit=checkpoints_total_limit,
        resume=resume,
        overwrite=overwrite,
        threads=threads,
    )
    if toy:
        from steerguide.train.recipes import RECIPES

        toy_config = RECIPES.lookup("toy").config

        # Only what the user typed overrides the toy subject and its tuned defaults.
        given = {k: v for k, v in options.items() if _given(ctx, k)}
        if base is not None or images is not None:
            raise UserError("--toy chooses the base model and the photos; leave out --base and --images")
        config = toy_config(toy, subjects_file=toy_subjects, **given)
    else:
        if toy_subjects is not None:
            raise UserError("--toy-subjects needs --toy SUBJECT")
        if base is None or images is None:
            raise UserError("--base and --images are required (or --toy SUBJECT)")
        config = TrainConfig(base=base, images=images, **options)

    rule = None
    if stop_when is not None:
        from steerguide.train.stopping import check_schedule, rule_for

        max_steps = 3 * config.steps if max_steps is None else max_steps
        check_schedule(config, check_every, max_steps)  # before any work
        rule = rule_for(stop_when, config, dino=judge_dino, clip=judge_clip)
    elif any(_given(ctx, name) for name in ("check_every", "max_steps", "judge_dino", "judge_clip")):
        raise UserError("--check-every, --max-steps, --judge-dino and --judge-clip go with --stop-when RULE")

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, TrainWarning):
            print(f"steerguide: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", TrainWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.showwarning = show
        try:
            if rule is None:
                folder = train(config, progress=not quiet)
            else:
                from steerguide.train.stopping import train_until

                folder, _ = train_until(config, rule, check_every, max_steps,
                                        lambda c: train(c, progress=not quiet),
                                        lambda line: print(f"steerguide: {line}", file=sys.stderr))
        except KeyboardInterrupt:
            raise Interrupted(_what_was_kept(Path(config.out), config.checkpoint_every)) from None
    print(folder)


def _what_was_kept(out: Path, every: int) -> str:
    from steerguide.train.trainer import checkpoints

    found = checkpoints(out)
    if found:
        return (
            f"the checkpoint at step {found[-1].name[5:]} is kept in {found[-1]}; "
            "run the same command with --resume to continue from it"
        )
    when = f"one is made every {every} steps" if every else "--checkpoint-every 0 makes none"
    return f"no checkpoint was made yet ({when}); run the same command with --resume to start again"


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether an option was typed on the command line (not left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
