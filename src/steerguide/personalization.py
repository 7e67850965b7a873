"""What a loaded personalization is: its kind, where it came from, and how θ_ω is realized for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steerguide.errors import UserError
from steerguide.families import family_of, text_encoders
from steerguide.weak import ParameterDelta, RowScaledLora
from steerguide.weak.lora import (
    AdapterOutputDelta,
    adapter_active,
    output_scalable,
    row_scalable,
    tuner_layers,
)
from steerguide.weak.merged import merge_state, merged_adapter_delta, unmerge_adapter

KINDS = ("none", "lora", "full", "partial")


def _denoiser(pipe):
    return family_of(pipe).denoiser(pipe)


@dataclass
class Personalization:
    """A personalization installed on a pipeline, ready for guidance.

    Attributes:
        kind: "none" (the base model alone), "lora" (a peft adapter: LoRA, DoRA, LoHa, LoKr),
            "full" (every tensor may differ) or "partial" (a subset of tensors differs, e.g. Custom
            Diffusion's cross-attention k/v).
        source: the file or folder it was loaded from.
        adapter: the peft adapter name of the personalization (kind "lora"). Other adapters on the
            pipeline are part of θ_pre: only this one is scaled by ω.
        lora: per-row LoRA scales on the denoiser (a plain, unmerged LoRA), or None.
        denoiser_delta: θ_pre of the differing denoiser tensors (full and partial fine-tunes, and
            adapters realized in weight space: fused LoRAs, DoRA, LoHa, LoKr), or None.
        text_realizations: text encoder name → its θ_ω realization (`at(ω)`), when the
            personalization reaches into text encoders.
        weak_condition_fn: re-encodes the weak half's prompt with the text encoders at θ_ω.
        info: what the loader found (format, tensors that differ, tokens added, ...), for run.json.
    """

    kind: str = "none"
    source: str | None = None
    adapter: str | None = None
    lora: RowScaledLora | None = None
    denoiser_delta: ParameterDelta | None = None
    text_realizations: dict[str, Any] = field(default_factory=dict)
    weak_condition_fn: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    _adapter_states: dict[str, tuple] = field(default_factory=dict, repr=False)
    _merged_here: dict[str, list] = field(default_factory=dict, repr=False)  # layers merged by `prepare`

    def weak_condition(self, inputs: dict, omega: float, prompt_side: bool) -> dict:
        """The first half's denoiser inputs for the weak model θ_ω (unchanged unless a text encoder differs)."""
        if self.weak_condition_fn is None or omega == 1.0:
            return inputs
        return self.weak_condition_fn(inputs, omega, prompt_side)

    @property
    def weak_model(self):
        """θ_ω's realization on the main denoiser, as `prepare` chose it (`steerguide.weak.choose`): per-row
        LoRA scales, or θ_ω in weight space (tensor delta, merged adapter, adapter output term); None before
        `prepare` for an adapter, or without a personalization."""
        return self.lora if self.lora is not None else self.denoiser_delta

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, **self.info}

    def text_modules(self, pipe) -> list:
        """The text encoders whose weights the weak model changes (their calls are guarded while guiding)."""
        return [getattr(pipe, n) for n in self.text_realizations]

    # -- adapters: which realization, now ---------------------------------------------------------------
    def adapter_components(self, pipe) -> list[str]:
        """Names of the pipeline components carrying the personalization adapter ("denoiser" first)."""
        names = ["denoiser"] if tuner_layers(_denoiser(pipe), self.adapter) else []
        return names + [n for n, encoder in text_encoders(pipe).items() if tuner_layers(encoder, self.adapter)]

    def prepare(self, pipe) -> None:
        """Choose θ_ω's realization for the adapter's current state (called when guidance starts).

        A plain, active, unmerged LoRA gets per-row scales; DoRA and LoHa/LoKr get θ_ω's layer outputs in a
        call of their own (`AdapterOutputDelta`, nothing merged); a LoRA merged by `fuse_lora` is realized
        in weight space, and other adapter types are merged for the run and unmerged by `release`. An
        inactive personalization is refused: guidance would silently become CFG.
        """
        if self.kind != "lora":
            return
        components = self.adapter_components(pipe)
        if "denoiser" not in components:
            raise UserError(
                f"the personalization adapter {self.adapter!r} is no longer on the pipeline's denoiser"
            )
        for name in components:
            module = _denoiser(pipe) if name == "denoiser" else getattr(pipe, name)
            if not adapter_active(module, self.adapter):
                active = sorted({a for layer in tuner_layers(module) for a in layer.active_adapters})
                raise UserError(
                    f"the personalization adapter {self.adapter!r} is not active on the {name} (active: "
                    f"{', '.join(active) or 'none'}; diffusers activates only the newest LoRA loaded): call "
                    f"pipe.set_adapters([{self.adapter!r}, ...]) with every adapter you want"
                )
            reason = row_scalable(module, self.adapter)
            unmerged = reason is not None and output_scalable(module, self.adapter) is None
            if reason is None:
                state: tuple = ("rows",)
            elif unmerged:
                state = ("output",)
            else:
                state = ("merged", merge_state(module, self.adapter))
            if self._adapter_states.get(name) == state:
                continue
            old = self.lora if name == "denoiser" else self.text_realizations.get(name)
            if name == "denoiser" and old is None:
                old = self.denoiser_delta
            if isinstance(old, RowScaledLora):
                old.remove()
            if reason is None:
                realization = RowScaledLora(module, adapter=self.adapter)
                how = "row-scaled LoRA"
            elif unmerged:
                # θ_ω by linearity, nothing merged: the pipeline stays as diffusers has it (weak.lora)
                realization = AdapterOutputDelta(module, adapter=self.adapter)
                how = f"weight space ({reason}, unmerged: θ_ω's layers as base + ω·adapter output)"
            else:
                fresh = [layer for layer in tuner_layers(module, self.adapter) if not layer.merged_adapters]
                self._merged_here[name] = fresh
                realization = merged_adapter_delta(module, self.adapter)
                state = ("merged", merge_state(module, self.adapter))
                how = f"weight space ({reason})"
            self._adapter_states[name] = state
            if name == "denoiser":
                self.lora = realization if reason is None else None
                self.denoiser_delta = None if reason is None else realization
                self.info["realization"] = how
            else:
                self.text_realizations[name] = realization

    @staticmethod
    def _modules(pipe) -> list:
        return [_denoiser(pipe), *text_encoders(pipe).values()]

    def release(self) -> None:
        """Drop every cached θ_ω and re-encoded condition (sampling is over); adapters merged by `prepare`
        are unmerged, so that between runs the pipeline is what the user loaded."""
        if self.denoiser_delta is not None:
            self.denoiser_delta.release()
        for realization in self.text_realizations.values():
            realization.release()
        for name, layers in self._merged_here.items():
            for layer in layers:
                layer.unmerge()
            self._adapter_states.pop(name, None)  # the next `prepare` merges again
        self._merged_here = {}
        if self.weak_condition_fn is not None and hasattr(self.weak_condition_fn, "clear"):
            self.weak_condition_fn.clear()

    def unload(self, pipe) -> None:
        """Take the personalization off `pipe`: the pipeline holds the pretrained weights again."""
        if self.weak_condition_fn is not None and hasattr(self.weak_condition_fn, "uninstall"):
            self.weak_condition_fn.uninstall()
        if self.kind == "lora":
            for realization in (self.lora, self.denoiser_delta):
                if isinstance(realization, RowScaledLora):
                    realization.remove()
            for realization in self.text_realizations.values():
                if isinstance(realization, RowScaledLora):
                    realization.remove()
            for module in self._modules(pipe):
                unmerge_adapter(module, self.adapter)
                for layer in tuner_layers(module, self.adapter):
                    layer.delete_adapter(self.adapter)
                config = getattr(module, "peft_config", None)
                if isinstance(config, dict):
                    config.pop(self.adapter, None)
            if not any(tuner_layers(m) for m in self._modules(pipe)) and hasattr(pipe, "unload_lora_weights"):
                pipe.unload_lora_weights()  # no adapter left: take peft's wrappers off too
        else:
            if self.denoiser_delta is not None:
                self.denoiser_delta.restore()
            for realization in self.text_realizations.values():
                realization.restore()
        if self.tokens and hasattr(pipe, "unload_textual_inversion"):
            pipe.unload_textual_inversion(self.tokens)
        self.lora = self.denoiser_delta = None
        self.text_realizations = {}
        self._adapter_states = {}
        self._merged_here = {}
