"""`TrainConfig`: every option of a personalization run, with the defaults of the diffusers examples."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerguide import limits
from steerguide.errors import UserError

METHODS = ("lora", "dreambooth", "custom-diffusion")
# LoRA ranks beyond this are wider than the layers of the bases steerguide trains (SD 1.x: 320-1280
# features; the toy base: 32-128): no longer a low-rank update, and memory grows with the rank
# (--rank 100000 on the toy base was killed for memory).
MAX_LORA_RANK = 1024
MAX_RANK_WHY = "a LoRA wider than the layers it adapts is no low-rank update, and memory grows with the rank"
CROPS = ("center", "random", "resize")
PRECISIONS = ("no", "fp16", "bf16")

# Per-method defaults for real checkpoints (SD 1.5 / SDXL), as in the diffusers example scripts
# (train_dreambooth_lora.py, train_dreambooth.py, train_custom_diffusion.py).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"steps": 500, "learning_rate": 1e-4},
    "dreambooth": {"steps": 400, "learning_rate": 5e-6},
    "custom-diffusion": {"steps": 250, "learning_rate": 1e-5},
}

# Settings that define what is being trained: a resumed run must use the same ones as the checkpoint.
# Everything else (steps, checkpoint/validation cadence, progress) may change between resumes.
IDENTITY_FIELDS = (
    "base",
    "method",
    "token",
    "class_noun",
    "instance_prompt",
    "resolution",
    "crop",
    "random_flip",
    "batch_size",
    "gradient_accumulation",
    "rank",
    "lora_alpha",
    "target_modules",
    "train_text_encoder",
    "prior_preservation",
    "prior_loss_weight",
    "seed",
    "snr_gamma",
    "noise_offset",
    "latents",
)


@dataclass
class TrainConfig:
    """A personalization run: base model + a few photos of one subject → LoRA, DreamBooth or Custom Diffusion.

    `images` is a folder of photos, or a list of PIL images (programmatic use). `steps` and
    `learning_rate` left at None take the method's default (`METHOD_DEFAULTS`).
    """

    base: str | Path
    images: Any  # str | Path | Sequence[PIL.Image.Image]
    out: str | Path
    token: str = "sks"
    class_noun: str = ""
    method: str = "lora"
    instance_prompt: str | None = None  # default: "a photo of {token} {class_noun}"
    # optimisation
    steps: int | None = None
    learning_rate: float | None = None
    # Custom Diffusion: the new token's embedding at its own rate (None: the learning rate). Adam moves each
    # weight by about the rate whatever its size, and a word embedding may be far larger than a k/v weight.
    embedding_learning_rate: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    batch_size: int = 1
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    adam_weight_decay: float = 1e-2
    snr_gamma: float | None = None  # min-SNR loss weighting (Hang et al. 2023); None: plain MSE
    noise_offset: float = 0.0
    seed: int = 0
    # what is trained
    rank: int = 4
    lora_alpha: float | None = None  # default: rank (scale 1)
    target_modules: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    text_encoder_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    train_text_encoder: bool = False
    # prior preservation (DreamBooth's class-specific prior loss)
    prior_preservation: bool = False
    class_images: int = 100
    class_data_dir: str | Path | None = None  # default: OUT/class_images (generated when short)
    class_prompt: str | None = None  # default: the instance prompt without the token
    prior_loss_weight: float = 1.0
    # data
    resolution: int | None = None  # default: the base model's native resolution
    crop: str = "center"  # center | random (crop after resizing the short side) | resize (squash)
    random_flip: bool = False
    latents: str = "sample"  # sample the VAE posterior (diffusers' examples) or take its mode
    # hardware
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    dataloader_workers: int = 0
    threads: int | None = None  # torch CPU threads (None: torch's default); 1 is fastest on a busy CPU
    # validation samples
    validation_prompt: str | None = None  # default: the instance prompt
    validation_images: int = 4
    validation_every: int = 0  # 0: only at the end
    validation_inference_steps: int = 25
    validation_guidance_scale: float = 7.5
    # checkpoints and resuming
    checkpoint_every: int = 100  # 0: no intermediate checkpoints
    checkpoints_total_limit: int = 2
    resume: bool = False
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored in train.json

    def __post_init__(self) -> None:
        from steerguide.bases import BASES, resolve_base

        if str(self.base) in BASES:  # a named base ("toy"), as `generate` and sweep configs name it
            self.base = Path(resolve_base(self.base))
        self.target_modules = tuple(self.target_modules)
        self.text_encoder_target_modules = tuple(self.text_encoder_target_modules)

    # -- resolved values -------------------------------------------------------------------------------
    @property
    def max_steps(self) -> int:
        return self.steps if self.steps is not None else METHOD_DEFAULTS[self.method]["steps"]

    @property
    def lr(self) -> float:
        return (
            self.learning_rate
            if self.learning_rate is not None
            else METHOD_DEFAULTS[self.method]["learning_rate"]
        )

    @property
    def embedding_lr(self) -> float:
        return self.embedding_learning_rate if self.embedding_learning_rate is not None else self.lr

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.rank)

    def prompt(self) -> str:
        return self.instance_prompt or f"a photo of {self.token} {self.class_noun}".replace("  ", " ").strip()

    def prior_prompt(self) -> str:
        """The class prompt: given, or the instance prompt with the token removed ("a photo of dog")."""
        if self.class_prompt:
            return self.class_prompt
        return " ".join(re.sub(rf"(?<!\S){re.escape(self.token)}(?!\S)", " ", self.prompt()).split())

    def check(self) -> None:
        """Raise `UserError` for options that cannot work, before anything is loaded."""
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; expected one of: {', '.join(METHODS)}")
        for name in ("learning_rate", "embedding_learning_rate", "max_grad_norm", "adam_weight_decay",
                     "snr_gamma", "noise_offset", "lora_alpha", "prior_loss_weight",
                     "validation_guidance_scale"):
            if getattr(self, name) is not None:  # NaN passes every comparison below
                limits.finite(f"--{name.replace('_', '-')}", getattr(self, name))
        if self.threads is not None:
            limits.threads(self.threads)
        limits.seed("--seed", self.seed)
        if self.resolution is not None:
            limits.image_side("--resolution", self.resolution)
        if self.rank < 1:
            raise UserError(f"--rank must be at least 1 (got {self.rank})")
        if self.rank > MAX_LORA_RANK:
            raise UserError(f"--rank must be at most {MAX_LORA_RANK} (got {self.rank}): {MAX_RANK_WHY}")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise UserError(f"--snr-gamma must be positive (got {self.snr_gamma:g}); leave it out for plain MSE")
        if self.max_grad_norm < 0:
            raise UserError(f"--max-grad-norm must not be negative (got {self.max_grad_norm:g}); 0 turns clipping off")
        if self.resume and self.overwrite:
            raise UserError("give --resume (continue --out) or --overwrite (replace it), not both")
        if self.instance_prompt is not None and not self.instance_prompt.strip():
            raise UserError(
                "--instance-prompt is empty: give the words to train on (with the token), or leave it out "
                "for 'a photo of TOKEN CLASS'"
            )
        if self.prior_preservation and self.class_data_dir is not None:
            folder = Path(self.class_data_dir)
            if folder.exists() and not folder.is_dir():
                raise UserError(f"--class-data-dir {folder} is not a folder")
            if not folder.exists():  # to be made and filled with generated class images
                from steerguide.files import check_writable

                check_writable(folder, "--class-data-dir")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise UserError(f"--lora-alpha must be positive (got {self.lora_alpha})")
        from diffusers.optimization import SchedulerType

        schedulers = [t.value for t in SchedulerType]
        if self.lr_scheduler not in schedulers:
            raise UserError(
                f"unknown --lr-scheduler {self.lr_scheduler!r}; expected one of: {', '.join(schedulers)}"
            )
        if self.latents not in ("sample", "mode"):
            raise UserError(f"--latents must be 'sample' or 'mode' (got {self.latents!r})")
        if self.crop not in CROPS:
            raise UserError(f"unknown crop {self.crop!r}; expected one of: {', '.join(CROPS)}")
        if self.mixed_precision not in PRECISIONS:
            raise UserError(
                f"unknown mixed precision {self.mixed_precision!r}; expected one of: {', '.join(PRECISIONS)}"
            )
        for name in ("batch_size", "gradient_accumulation", "validation_inference_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        for name in ("validation_images", "validation_every", "checkpoint_every", "lr_warmup_steps"):
            if getattr(self, name) < 0:
                raise UserError(
                    f"--{name.replace('_', '-')} must not be negative (got {getattr(self, name)})"
                )
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps must be at least 1 (got {self.steps})")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise UserError(f"--learning-rate must be positive (got {self.learning_rate})")
        if self.embedding_learning_rate is not None:
            if not self.embedding_learning_rate > 0:
                raise UserError(
                    f"--embedding-learning-rate must be positive (got {self.embedding_learning_rate})"
                )
            if self.method != "custom-diffusion":
                raise UserError(
                    "--embedding-learning-rate is only for --method custom-diffusion (its new token)"
                )
        if self.checkpoints_total_limit < 1:
            raise UserError(
                f"--checkpoints-total-limit must be at least 1 (got {self.checkpoints_total_limit})"
            )
        if self.prior_preservation and self.class_images < 1:
            raise UserError(
                f"--class-images must be at least 1 with --prior-preservation (got {self.class_images})"
            )
        if not self.token or len(self.token.split()) != 1:
            raise UserError(f"--token must be one word (got {self.token!r})")
        if self.prior_preservation and not self.class_noun and not self.class_prompt:
            raise UserError("--prior-preservation needs --class-noun (or --class-prompt)")
        if not re.search(rf"(?<!\S){re.escape(self.token)}(?!\S)", self.prompt()):
            raise UserError(
                f"the instance prompt {self.prompt()!r} does not contain the token {self.token!r}"
            )
        if not self.target_modules:
            raise UserError("--target-modules must name at least one module")

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values (images given as PIL objects are recorded by count)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "images" and not isinstance(value, (str, Path)):
                value = f"<{len(value)} PIL images>"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out.update(max_steps=self.max_steps, lr=self.lr, embedding_lr=self.embedding_lr, alpha=self.alpha)
        return out
