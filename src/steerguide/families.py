"""The pipeline families steerguide guides, one object per family owning its facts.

diffusers pipelines run guidance in one of two ways:

- batched: the denoiser runs once a step on [negative half; prompt half] (SD 1.x/2.x, SDXL, SD3, PixArt,
  Sana). Whether the pipeline guides is the `do_classifier_free_guidance` attribute, or (PixArt) the
  argument of that name it hands to `encode_prompt`. The engine is `steerguide.one_batch.GuidedDenoiser`.
- separate: the prompt call and the negative call are two denoiser calls a step, the prompt call first
  (Flux's true CFG, Chroma, ...). The negative call is the one the pipeline makes inside
  `transformer.cache_context("uncond")` (it makes one only while it guides), or, for a pipeline without
  that marker (Chroma), the second call of a step on the same latents while
  `do_classifier_free_guidance` holds. The engine is `steerguide.separate.SeparatePassDenoiser`.

A pipeline is matched by its class name; a pipeline of no family here is guided as `GENERIC` is, which is
what steerguide did before this registry (batched, recognized by attribute or `encode_prompt` argument,
refused for PG/AG where neither exists). Adding a family is one entry here, its tiny-model builder in
`steerguide.testing`, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BATCHED = "batched"
SEPARATE = "separate"

# How a family says that a call runs guidance (batched) or is the negative call (separate).
BY_ATTRIBUTE = "attribute"  # `pipe.do_classifier_free_guidance` (a property)
BY_ENCODE_PROMPT = "encode_prompt"  # the `do_classifier_free_guidance` argument of `pipe.encode_prompt`
BY_CACHE_CONTEXT = "cache_context"  # the call runs inside `denoiser.cache_context("uncond")`
# the second call of a step, on the prompt call's latents, while `pipe.do_classifier_free_guidance`
BY_CALL_ORDER = "call_order"


def _unet_native_side(pipe) -> int | None:
    """UNet pipelines: `unet.config.sample_size · vae_scale_factor` (what they make by default)."""
    unet = getattr(pipe, "unet", None)
    factor = getattr(pipe, "vae_scale_factor", None)
    size = getattr(getattr(unet, "config", None), "sample_size", None)
    if isinstance(size, int) and isinstance(factor, int):
        return size * factor
    return None


def _default_sample_side(pipe) -> int | None:
    """Pipelines with `default_sample_size` (Flux, ...): that many latents a side, times the VAE's factor."""
    size = getattr(pipe, "default_sample_size", None)
    factor = getattr(pipe, "vae_scale_factor", None)
    if isinstance(size, int) and isinstance(factor, int):
        return size * factor
    return None


def _no_native_side(pipe) -> int | None:
    return None


@dataclass(frozen=True)
class Family:
    """What steerguide needs to know about one family of diffusers pipelines.

    Attributes:
        name: a short name (run.json, messages).
        pipelines: the diffusers pipeline class names of the family.
        denoisers: the pipeline attributes holding its denoiser(s), the main one first.
        guidance: BATCHED or SEPARATE (see the module docstring).
        signal: how the engine tells that a call guides / is the negative call (BY_*).
        scale_argument: the pipeline argument that is the real CFG scale w.
        distilled_argument: the argument of a guidance embedding distilled into the model (Flux's
            `guidance_scale`), which is no CFG; None where there is none.
        negative_prompt_default: the negative prompt passed where the user gives none, for families whose
            guidance runs only with one (true CFG); None: the pipeline's own null prompt.
        text_encoders: the pipeline attributes holding its text encoders.
        lora_prefixes: the key prefixes of LoRA files in the layouts its loader reads (besides PEFT's own).
        lora_layers_key: the `save_lora_weights` argument of the denoiser's LoRA layers.
        native_side: the pixel side the pipeline makes by default (None where it cannot tell).
        video: the pipeline makes videos (`.frames`, not `.images`).
        condition_outputs: separate-pass families: the denoiser keyword each output of `encode_prompt`
            goes to, for re-encoding the weak call's condition when the personalization reaches into the
            text encoders (empty: such personalizations are refused for PG/AG).
    """

    name: str
    pipelines: tuple[str, ...]
    denoisers: tuple[str, ...] = ("transformer",)
    guidance: str = BATCHED
    signal: str = BY_ATTRIBUTE
    scale_argument: str = "guidance_scale"
    distilled_argument: str | None = None
    negative_prompt_default: str | None = None
    text_encoders: tuple[str, ...] = ("text_encoder",)
    lora_prefixes: tuple[str, ...] = ("transformer.", "text_encoder")
    lora_layers_key: str = "transformer_lora_layers"
    native_side: Any = field(default=_no_native_side, compare=False, repr=False)
    video: bool = False
    condition_outputs: tuple[str, ...] = ()

    @property
    def separate(self) -> bool:
        return self.guidance == SEPARATE

    def denoiser(self, pipe):
        """The main denoiser module."""
        return self.denoiser_modules(pipe)[0]

    def denoiser_modules(self, pipe) -> list:
        """The denoiser modules the pipeline holds (Wan 2.2: two experts), the main one first."""
        found = [getattr(pipe, n, None) for n in self.denoisers]
        found = [m for m in found if m is not None]
        if not found:
            raise TypeError(f"{type(pipe).__name__} has no {' or '.join(self.denoisers)}")
        return found

    def scale_kwargs(self, scale: float, distilled: float | None = None) -> dict[str, float]:
        """The pipeline arguments for CFG scale w (and the distilled guidance, where the family has one)."""
        kwargs = {self.scale_argument: scale}
        if self.distilled_argument is not None and distilled is not None:
            kwargs[self.distilled_argument] = distilled
        return kwargs


_UNET_LORA = ("unet.", "text_encoder", "lora_unet_", "lora_te", "diffusion_model.", "lora.")
_TRANSFORMER_LORA = ("transformer.", "text_encoder", "lora_transformer_", "diffusion_model.", "lora.")

SD = Family(
    name="sd",
    pipelines=("StableDiffusionPipeline",),
    denoisers=("unet",),
    lora_prefixes=_UNET_LORA,
    lora_layers_key="unet_lora_layers",
    native_side=_unet_native_side,
)
SDXL = Family(
    name="sdxl",
    pipelines=("StableDiffusionXLPipeline",),
    denoisers=("unet",),
    text_encoders=("text_encoder", "text_encoder_2"),
    lora_prefixes=_UNET_LORA,
    lora_layers_key="unet_lora_layers",
    native_side=_unet_native_side,
)
SD3 = Family(
    name="sd3",
    pipelines=("StableDiffusion3Pipeline",),
    text_encoders=("text_encoder", "text_encoder_2", "text_encoder_3"),
    lora_prefixes=_TRANSFORMER_LORA,
)
PIXART = Family(
    name="pixart",
    pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
    signal=BY_ENCODE_PROMPT,  # keeps its CFG decision in a local, handed to encode_prompt
    lora_prefixes=(),  # diffusers has no LoRA loader for PixArt
)
SANA = Family(name="sana", pipelines=("SanaPipeline",), lora_prefixes=_TRANSFORMER_LORA)
FLUX = Family(
    name="flux",
    pipelines=("FluxPipeline",),
    guidance=SEPARATE,
    signal=BY_CACHE_CONTEXT,
    scale_argument="true_cfg_scale",
    distilled_argument="guidance_scale",
    negative_prompt_default="",  # true CFG runs only with a negative prompt
    text_encoders=("text_encoder", "text_encoder_2"),
    condition_outputs=("encoder_hidden_states", "pooled_projections", "txt_ids"),
    lora_prefixes=("transformer.", "text_encoder", "lora_unet_", "lora_te", "diffusion_model.", "lora_transformer_"),
    native_side=_default_sample_side,
)

CHROMA = Family(
    name="chroma",
    pipelines=("ChromaPipeline",),
    guidance=SEPARATE,
    signal=BY_CALL_ORDER,  # two calls a step without a cache_context marker
    lora_prefixes=FLUX.lora_prefixes,  # diffusers loads Chroma LoRAs with Flux's loader
    native_side=_default_sample_side,
)

QWEN_IMAGE = Family(
    name="qwen-image",
    pipelines=("QwenImagePipeline",),
    guidance=SEPARATE,
    signal=BY_CACHE_CONTEXT,
    scale_argument="true_cfg_scale",  # renormalized to |cond| after the mix, by the pipeline
    negative_prompt_default="",  # true CFG runs only with a negative prompt
    lora_prefixes=("transformer.", "lora_unet_", "diffusion_model.", "lora_transformer_"),
    native_side=_default_sample_side,
)

WAN = Family(
    name="wan",
    pipelines=("WanPipeline",),
    denoisers=("transformer", "transformer_2"),  # Wan 2.2: high-noise and low-noise experts by timestep
    guidance=SEPARATE,
    signal=BY_CACHE_CONTEXT,  # on whichever expert the step uses (`current_model.cache_context`)
    lora_prefixes=("transformer.", "transformer_2.", "lora_unet_", "diffusion_model.", "lora_transformer_"),
    video=True,
)

FAMILIES: tuple[Family, ...] = (SD, SDXL, SD3, PIXART, SANA, FLUX, CHROMA, QWEN_IMAGE, WAN)

# Pipelines of no family above (img2img and inpainting variants, community pipelines, ...): guided as
# before the registry, batched and recognized by attribute or encode_prompt argument.
GENERIC = Family(
    name="generic",
    pipelines=(),
    denoisers=("transformer", "unet"),
    text_encoders=("text_encoder", "text_encoder_2", "text_encoder_3"),
    lora_prefixes=tuple(dict.fromkeys(_UNET_LORA + _TRANSFORMER_LORA)),
    native_side=_unet_native_side,
)

_BY_PIPELINE = {name: family for family in FAMILIES for name in family.pipelines}


def family_of(pipe) -> Family:
    """The family of a pipeline (an instance or a class), by class name; GENERIC for any other."""
    cls = pipe if isinstance(pipe, type) else type(pipe)
    return _BY_PIPELINE.get(cls.__name__, GENERIC)


def text_encoders(pipe) -> dict[str, Any]:
    """The text encoders a pipeline holds, by attribute, in its family's order (a pipeline of no family,
    a modular pipeline's components: every name that any family uses)."""
    names = family_of(pipe).text_encoders
    return {name: getattr(pipe, name) for name in names if getattr(pipe, name, None) is not None}


def family_named(name: str) -> Family:
    for family in (*FAMILIES, GENERIC):
        if family.name == name:
            return family
    raise KeyError(name)
