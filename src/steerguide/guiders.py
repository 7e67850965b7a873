"""PG and AG as diffusers guiders, for diffusers' modular pipelines (`pipe.update_components(guider=...)`).

diffusers' modular pipelines (SDXL, SD3, ...) hand guidance to a guider component: at each step the
guider splits the denoiser inputs into batches (`prepare_inputs`), the pipeline runs the denoiser once per
batch between `prepare_models` and `cleanup_models`, and the guider combines the predictions
(`forward`). `ClassifierFreeGuidance` runs [prompt; negative prompt] through the same model. Here:

    PersonalizationGuidance   second batch: θ_ω = θ_pre + ω(τ)·Δ on the negative (null) prompt   (PG)
    PersonalizedAutoGuidance  second batch: θ_ω on the prompt itself                         (AG)

and `forward` is CFG's formula, so PG at ω = 1 is `ClassifierFreeGuidance`. θ_ω is steerguide's weak
model, realized as the engine realizes it (`Personalization.prepare`: per-row scales of the personalization
adapter alone, or weight space for fused LoRAs, DoRA, LoHa/LoKr and fine-tunes), switched on by torch hooks
around the second batch's denoiser call only, so the weights are θ_ft again afterwards even when the
call raises. ω, its schedule and the interval are the guider's config (`save_pretrained` /
`from_pretrained`, `guider_config.json`); the personalization is runtime state, not config.

`start`/`stop` mean what they mean for diffusers' guiders and for `GuidanceConfig.interval`: guidance
runs at steps int(start·N) <= i < int(stop·N), decided by the one function both use
(`steerguide.guidance.step_in_interval`). ω(τ) is evaluated at τ = i/N, and i counts steps as
`steerguide.guided` counts them: on second-order schedulers (Heun, KDPM2: 2N−1 denoiser calls) a step's
predictor and corrector are one step (`steerguide.block.step_of`; diffusers' own `ClassifierFreeGuidance`
counts the 2N−1 calls against N). The method (its default ω, which condition the weak batch gets) is
the guider's `steerguide.methods` object; θ_ω's realization is chosen as for `guided`
(`Personalization.weak_model`, `steerguide.weak.choose.weak_at`).
"""

from __future__ import annotations

import math
import os
import weakref
from contextlib import AbstractContextManager, nullcontext
from types import SimpleNamespace
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput, rescale_noise_cfg

from steerguide.block import step_of
from steerguide.errors import UserError
from steerguide.families import text_encoders
from steerguide.guidance import GuidanceConfig, step_in_interval
from steerguide.methods.ag import AG
from steerguide.methods.pg import PG
from steerguide.personalization import Personalization
from steerguide.pipeline_call import calling_components
from steerguide.weak.choose import weak_at
from steerguide.weak.gate import Guard, module_lock
from steerguide.weak.lora import tuner_layers


class _WeakModelGuidance(BaseGuidance):
    """CFG's two batches and formula, with the second batch run by the weak model θ_ω."""

    _input_predictions = ["pred_cond", "pred_uncond"]
    ignore_for_config = ["personalization"]
    _method = PG  # the steerguide method this guider realizes

    @property
    def _weak_branch(self) -> int:
        """Which tuple element of each input the weak batch gets: 0 the prompt's, 1 the negative prompt's."""
        return 0 if self._method.weak_on_prompt else 1

    def _setup(
        self,
        guidance_scale: float,
        omega: float,
        omega_schedule: str,
        guidance_rescale: float,
        allow_extrapolation: bool,
        personalization: Personalization | None,
    ) -> None:
        if not isinstance(omega_schedule, str):
            raise UserError("omega_schedule must be a string (e.g. 'linear:1.0') so that it can be saved")
        # Validates ω over the whole schedule, the scale and φ, with the CLI's one-line messages.
        self._guidance = GuidanceConfig(
            method=self._method.name,
            scale=guidance_scale,
            omega=omega,
            omega_schedule=omega_schedule,
            guidance_rescale=guidance_rescale,
            allow_extrapolation=allow_extrapolation,
        )
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        self.personalization: Personalization | None = None
        self._found: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # denoiser → its adapter
        self._hooks: list = []
        self._weak_context: AbstractContextManager | None = None
        self._weak_guard: Guard | None = None  # the module lock held by the weak pass under way
        if personalization is not None:
            self.personalize(personalization)

    # -- the personalization --------------------------------------------------------------------------
    def personalize(self, personalization: Personalization | None):
        """Use this personalization's θ_ω (from `steerguide.load_personalization` on the same denoiser).

        None: the LoRA adapters loaded into the denoiser (e.g. by `pipe.load_lora_weights`) are Δ.
        Returns the guider.
        """
        if personalization is not None:
            if personalization.kind == "none":
                raise UserError(
                    f"{type(self).__name__} needs a personalization (θ_pre and θ_ft are the same)"
                )
            if personalization.weak_condition_fn is not None:
                raise UserError(
                    f"{personalization.source}: the personalization changes the text encoder(s), which the "
                    "guider cannot re-run for the weak branch; use steerguide.guided / sample instead"
                )
        self.personalization = personalization
        return self

    def new(self, **kwargs):
        """A copy with some config changed (as diffusers' `new`), keeping the personalization."""
        guider = super().new(**kwargs)
        return guider.personalize(self.personalization)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        subfolder: str | None = None,
        personalization: Personalization | None = None,
        **kwargs,
    ):
        guider = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        return guider.personalize(personalization)

    # -- state ------------------------------------------------------------------------------------------
    def progress(self) -> float:
        """τ: the fraction of the steps done before the current one."""
        if not self._num_inference_steps or self._step is None:
            return 0.0
        return self._step / self._num_inference_steps

    def omega_now(self) -> float:
        return self._guidance.omega_at(self.progress())

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.LongTensor) -> None:
        self._release()  # a step whose cleanup never ran (an exception) leaves nothing behind
        components = calling_components(lambda c: getattr(c, "scheduler", None) is not None)
        scheduler = getattr(components, "scheduler", None)
        if getattr(scheduler, "order", 1) == 2:
            # Heun/KDPM2: the loop index runs over 2N−1 calls; count a step's predictor and corrector as one
            # step, as `steerguide.guided` does (τ = step/N, the interval over steps)
            step, num_inference_steps = step_of(scheduler, timestep)
        super().set_state(step, num_inference_steps, timestep)

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["omega"] = self.omega_now() if self._is_guidance_enabled() else None
        return state

    def _is_guidance_enabled(self) -> bool:
        if not self._enabled:
            return False
        in_range = True
        if self._num_inference_steps is not None:
            in_range = step_in_interval(self._step, self._num_inference_steps, self._start, self._stop)
        return in_range and not math.isclose(self.guidance_scale, 1.0)

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared == 1

    @property
    def num_conditions(self) -> int:
        return 2 if self._is_guidance_enabled() else 1

    # -- batches ------------------------------------------------------------------------------------------
    def _branches(self, has_negative: bool) -> list[int]:
        if self.num_conditions == 1:
            return [0]
        if self._weak_branch == 1 and not has_negative:
            raise UserError(
                f"{type(self).__name__} needs the negative (null) prompt's embeddings, and the pipeline made "
                "none; pass negative_prompt='' (SD3's modular pipeline skips them otherwise)"
            )
        return [0, self._weak_branch]

    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list:
        has_negative = any(isinstance(v, tuple) and v[1] is not None for v in data.values())
        return [
            self._prepare_batch(data, branch, name)
            for branch, name in zip(self._branches(has_negative), self._input_predictions, strict=False)
        ]

    def prepare_inputs_from_block_state(self, data, input_fields: dict[str, str | tuple[str, str]]) -> list:
        has_negative = any(
            isinstance(v, tuple) and getattr(data, v[1], None) is not None for v in input_fields.values()
        )
        return [
            self._prepare_batch_from_block_state(input_fields, data, branch, name)
            for branch, name in zip(self._branches(has_negative), self._input_predictions, strict=False)
        ]

    # -- θ_ω around the weak batch's denoiser call ----------------------------------------------------------
    def _personalization_for(self, denoiser: torch.nn.Module) -> Personalization:
        """The personalization given, or the one adapter diffusers loaded into `denoiser` (found once)."""
        if self.personalization is not None:
            return self.personalization
        personal = self._found.get(denoiser)
        if personal is None:
            names = sorted(
                {
                    a
                    for layer in tuner_layers(denoiser)
                    for n in layer.adapter_layer_names
                    for a in getattr(layer, n, {})
                }
            )
            if not names:
                raise UserError(
                    f"{type(self).__name__}: the {type(denoiser).__name__} carries no LoRA; load the "
                    "personalization (pipe.load_lora_weights) or pass personalization="
                )
            if len(names) > 1:  # the others (style, detail) are part of θ_pre: say which one is Δ
                raise UserError(
                    f"{type(self).__name__}: the {type(denoiser).__name__} carries adapters "
                    f"{', '.join(names)}; pass personalization=steerguide.load_personalization(pipe, None, "
                    "adapter_name=NAME) naming the personalization"
                )
            personal = Personalization(kind="lora", source=names[0], adapter=names[0])
            self._found[denoiser] = personal
        self._refuse_text_encoder_adapter(denoiser, personal.adapter)
        return personal

    def _refuse_text_encoder_adapter(self, denoiser: torch.nn.Module, adapter: str) -> None:
        """diffusers loads a LoRA's text encoder part under the same adapter name; the guider sees only the
        prompt embeddings (θ_ft's), so it cannot give the weak branch θ_ω's text encoders: refused."""
        components = calling_components(
            lambda c: getattr(c, "unet", None) is denoiser or getattr(c, "transformer", None) is denoiser
        )
        for name, encoder in text_encoders(components).items():
            if isinstance(encoder, torch.nn.Module) and tuner_layers(encoder, adapter):
                raise UserError(
                    f"{type(self).__name__}: the LoRA {adapter!r} is also in the {name}, whose θ_ω the weak "
                    "branch would need (the guider sees only prompt embeddings); use steerguide.guided / "
                    "sample, or load the LoRA into the denoiser alone"
                )

    def _prepare(self, denoiser: torch.nn.Module) -> Personalization:
        """θ_ω's realization chosen as the engine chooses it (`Personalization.prepare`): per-row LoRA
        scales for a plain active LoRA (only the personalization adapter; other adapters stay in θ_pre),
        weight space for fused LoRAs, DoRA, LoHa/LoKr; an inactive personalization adapter is refused."""
        personal = self._personalization_for(denoiser)
        # prepare may merge adapters: state on the module that a `guided` block may be using
        with module_lock(denoiser) or nullcontext():
            personal.prepare(SimpleNamespace(transformer=denoiser))
        return personal

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        self._count_prepared += 1
        self._release()
        if not self._is_guidance_enabled():
            return
        personal = self._prepare(denoiser)  # both batches: the prompt batch runs θ_ft as the weak one sees it
        if not self.is_unconditional:
            return
        omega = self.omega_now()
        if omega == 1.0:
            return  # θ_1 = θ_ft: nothing to switch
        realization = personal.weak_model
        if realization is None:
            raise UserError(f"{type(self).__name__}: personalization {personal.source} has no weak model")

        def enter(module, args, kwargs):
            # θ_ω is state on a module other pipelines and threads may share: the weak pass holds the
            # module's lock, once calls of other threads already under way have finished (`Guard`, as a
            # `guided` block does), so that no plain call runs while it is in place
            guard = Guard.of(module)
            guard.enter()
            guard.lock.acquire()
            self._weak_guard = guard
            self._weak_context = weak_at(realization, omega)
            self._weak_context.__enter__()

        def leave(module, args, kwargs, output):
            self._exit_weak_model()

        self._hooks = [
            denoiser.register_forward_pre_hook(enter, with_kwargs=True),
            denoiser.register_forward_hook(leave, with_kwargs=True, always_call=True),
        ]

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        self._release()
        last = (
            self._num_inference_steps is not None
            and self._step is not None
            and (self._step >= self._num_inference_steps - 1)
        )
        if last and self.is_unconditional and self._is_guidance_enabled():
            self._personalization_for(denoiser).release()  # θ_ω caches do not outlive sampling

    def _exit_weak_model(self) -> None:
        context, self._weak_context = self._weak_context, None
        guard, self._weak_guard = self._weak_guard, None
        try:
            if context is not None:
                context.__exit__(None, None, None)
        finally:
            if guard is not None:
                guard.lock.release()
                guard.leave()

    def _release(self) -> None:
        self._exit_weak_model()
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # -- the formula ------------------------------------------------------------------------------------------
    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        if not self._is_guidance_enabled():
            pred = pred_cond
        else:
            pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        if self.guidance_rescale > 0.0:
            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)


class PersonalizationGuidance(_WeakModelGuidance):
    """Personalization guidance (Park et al., ICCV 2025) as a diffusers guider.

    D = D_ω(x, ∅) + w · (D_ft(x, c) − D_ω(x, ∅)), θ_ω = θ_pre + ω(τ)·Δ.

    Args:
        guidance_scale: w (1 = no guidance).
        omega: ω at the start: the share of the personalization the weak model keeps (1 = CFG,
            0 = the pretrained model's null prediction).
        omega_schedule: "constant", "linear:END", "cosine:END" or "piecewise:T1=V1,..." (steerguide.schedules).
        guidance_rescale: φ of Lin et al. 2023, as in `ClassifierFreeGuidance`.
        allow_extrapolation: permit ω outside [0, 1].
        start, stop: the fractions of the steps between which guidance runs (diffusers' meaning).
        enabled: as for every diffusers guider.
        personalization: a steerguide `Personalization` loaded on the same denoiser (LoRA, full or
            partial fine-tune); None takes the LoRA adapters loaded in the denoiser as Δ. Not config.
    """

    _method = PG

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 7.5,
        omega: float = PG.default_omega,
        omega_schedule: str = "constant",
        guidance_rescale: float = 0.0,
        allow_extrapolation: bool = False,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
        personalization: Personalization | None = None,
    ):
        super().__init__(start, stop, enabled)
        self._setup(
            guidance_scale, omega, omega_schedule, guidance_rescale, allow_extrapolation, personalization
        )


class PersonalizedAutoGuidance(_WeakModelGuidance):
    """Autoguidance (Karras et al. 2024) with the unlearned model θ_ω as the weak model, as a diffusers guider.

    D = D_ω(x, c) + w · (D_ft(x, c) − D_ω(x, c)); ω = 0 (the default) guides with the pretrained model.
    Same arguments as `PersonalizationGuidance`. The pipeline still encodes a negative prompt, unused.
    """

    _method = AG

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 7.5,
        omega: float = AG.default_omega,
        omega_schedule: str = "constant",
        guidance_rescale: float = 0.0,
        allow_extrapolation: bool = False,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
        personalization: Personalization | None = None,
    ):
        super().__init__(start, stop, enabled)
        self._setup(
            guidance_scale, omega, omega_schedule, guidance_rescale, allow_extrapolation, personalization
        )


_MODULAR_BLOCKS = {
    "StableDiffusionXLPipeline": "StableDiffusionXLAutoBlocks",
    "StableDiffusion3Pipeline": "StableDiffusion3AutoBlocks",
    "QwenImagePipeline": "QwenImageAutoBlocks",  # a guider batch per transformer call, as SDXL's
}


def modular_pipeline(pipe):
    """diffusers' modular pipeline for a loaded stock SDXL, SD3 or Qwen-Image pipeline, sharing its components.

    A personalization installed on `pipe` (`steerguide.load_personalization`) is installed on the result.
    """
    import diffusers.modular_pipelines as modular

    blocks_name = _MODULAR_BLOCKS.get(type(pipe).__name__)
    if blocks_name is None:
        raise UserError(
            f"no diffusers modular pipeline for {type(pipe).__name__}; expected one of {', '.join(_MODULAR_BLOCKS)}"
        )
    modular_pipe = getattr(modular, blocks_name)().init_pipeline()
    wanted = set(modular_pipe.component_names)
    modular_pipe.update_components(
        **{name: part for name, part in pipe.components.items() if part is not None and name in wanted}
    )
    return modular_pipe
