"""LoRA in the diffusers, PEFT or kohya format, and PEFT's other adapter types (LyCORIS: LoHa, LoKr,
...): loaded as an adapter beside the ones the user has on, and realized by per-row scales
(`weak.RowScaledLora`)."""

from __future__ import annotations

import json
import warnings as pywarnings
from collections.abc import Mapping
from pathlib import Path

import torch

from steerguide.errors import UserError, first_line
from steerguide.families import GENERIC, family_of
from steerguide.loading.logs import captured_warnings
from steerguide.loading.pipelines import denoiser_of_pipe, text_encoders
from steerguide.loading.weight_files import read_state_dict
from steerguide.personalization import Personalization
from steerguide.weak.lora import tuner_layers

ADAPTER = "personal"

LORA_FILE = "pytorch_lora_weights.safetensors"

PIPELINE_LORA_PREFIXES = GENERIC.lora_prefixes  # every family's: a file with none of them is PEFT's own

_MISFIT_SIGNS = (
    "unexpected keys",
    "missing keys",
    "inconsistency was discovered between the PEFT config",
    "were set but no module was matched",
)


def _peft_alpha_over_rank(folder: Path) -> float:
    """lora_alpha / r from a PEFT `adapter_config.json` beside the weights (1 when there is none)."""
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        return 1.0
    config = json.loads(config_path.read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_rslora"):
        raise UserError(
            f"{config_path}: per-module ranks/alphas and rsLoRA are not supported; "
            "convert the adapter with diffusers' save_lora_weights first"
        )
    return float(config.get("lora_alpha", config.get("r", 1))) / float(config.get("r", 1))


def _active_adapters(pipe) -> dict[int, list[str]]:
    """The adapters each peft layer of the pipeline computes now (to keep them active after a load)."""
    modules = [denoiser_of_pipe(pipe)] + [m for _, m in text_encoders(pipe)]
    return {id(layer): list(layer.active_adapters) for m in modules for layer in tuner_layers(m)}


def _activate_alongside(pipe, name: str, before: dict[int, list[str]]) -> None:
    """Loading an adapter makes it the only active one; keep the ones that were active before, too.

    Layer-level `set_adapter` keeps every adapter's own scale (its `set_adapters` weight).
    """
    everywhere = sorted({a for names in before.values() for a in names})
    modules = [denoiser_of_pipe(pipe)] + [m for _, m in text_encoders(pipe)]
    for module in modules:
        for layer in tuner_layers(module):
            wanted = before.get(id(layer), everywhere)
            own = {k for n in layer.adapter_layer_names for k in getattr(layer, n, {})}
            names = [a for a in dict.fromkeys([*wanted, name]) if a in own]
            if names:
                layer.set_adapter(names, inference_mode=True)


def adapter_names(pipe) -> set[str]:
    modules = [denoiser_of_pipe(pipe)] + [m for _, m in text_encoders(pipe)]
    return {
        k
        for m in modules
        for layer in tuner_layers(m)
        for n in layer.adapter_layer_names
        for k in getattr(layer, n, {})
    }


def _install_peft_adapter(pipe, path: Path, state: dict, config: dict, name: str) -> None:
    """A PEFT adapter folder of another type than plain LoRA (LoHa, LoKr, ...), loaded with peft itself."""
    from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict

    denoiser = denoiser_of_pipe(pipe)
    try:
        peft_config = PeftConfig.from_peft_type(**{k: v for k, v in config.items() if k != "auto_mapping"})
        inject_adapter_in_model(peft_config, denoiser, adapter_name=name)
        result = set_peft_model_state_dict(denoiser, state, adapter_name=name)
    except UserError:
        raise
    except Exception as e:
        first = first_line(e) or type(e).__name__
        raise UserError(
            f"adapter {path} does not fit this base model ({type(pipe).__name__}): {first[:300]}"
        ) from None
    unexpected = [k for k in getattr(result, "unexpected_keys", []) or [] if name in k or "." in k]
    if unexpected:
        raise UserError(
            f"adapter {path} does not fit this base model ({type(pipe).__name__}): "
            f"{len(unexpected)} tensors have no place (e.g. {unexpected[0]})"
        )


def _check_lora_family(pipe, path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """A LoRA file laid out only for other families' denoisers (an SD LoRA on Flux) is refused up front."""
    family = family_of(pipe)
    if family is GENERIC:
        return
    laid_out = [k for k in state if k.startswith(PIPELINE_LORA_PREFIXES)]
    if laid_out and not any(k.startswith(family.lora_prefixes) for k in laid_out):
        raise UserError(
            f"LoRA {path} does not fit this base model ({type(pipe).__name__}): its keys are laid out for "
            f"another kind of model (e.g. {laid_out[0]!r})"
        )


def install_lora(pipe, path: Path, name: str = ADAPTER) -> Personalization:
    denoiser = denoiser_of_pipe(pipe)
    if name in adapter_names(pipe):
        raise UserError(
            f"the pipeline already has an adapter named {name!r}; load the personalization under another "
            "name (adapter_name=...), or pass adapter_name with no path to use that adapter"
        )
    before = _active_adapters(pipe)
    source = path if path.is_dir() else path.parent
    kwargs = {} if path.is_dir() else {"weight_name": path.name}
    state = None if path.is_dir() else read_state_dict(path)
    if state is not None:
        _check_lora_family(pipe, path, state)
    bare_peft = state is not None and not any(k.startswith(PIPELINE_LORA_PREFIXES) for k in state)
    peft_config = None
    if bare_peft and (path.parent / "adapter_config.json").is_file():
        peft_config = json.loads((path.parent / "adapter_config.json").read_text())
    with (
        captured_warnings(("diffusers", "peft")) as warnings,
        pywarnings.catch_warnings(record=True) as raised,
    ):
        pywarnings.simplefilter("always")
        try:
            if bare_peft:
                # PEFT's own layout (`base_model.model.<module>.lora_A.weight`, or no prefix at all) names
                # denoiser modules directly; diffusers' pipeline loader expects "unet."/"transformer.".
                state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
                if peft_config is not None and str(peft_config.get("peft_type", "LORA")).upper() != "LORA":
                    _install_peft_adapter(pipe, path, state, peft_config, name)
                else:
                    factor = _peft_alpha_over_rank(path.parent)
                    if factor != 1.0:  # diffusers takes alpha = r here: fold alpha / r into B instead
                        state = {k: v * factor if ".lora_B." in k else v for k, v in state.items()}
                    denoiser.load_lora_adapter(state, prefix=None, adapter_name=name)
            else:
                pipe.load_lora_weights(str(source), adapter_name=name, **kwargs)
        except UserError:
            raise
        except Exception as e:
            first = first_line(e) or type(e).__name__
            raise UserError(
                f"LoRA {path} does not fit this base model ({type(pipe).__name__}): {first[:300]}"
            ) from None
    # diffusers logs unmatched keys; peft raises a RuntimeWarning when adapters it was given found no module.
    warnings += [str(w.message) for w in raised if issubclass(w.category, RuntimeWarning)]
    bad = [w for w in warnings if any(sign in w for sign in _MISFIT_SIGNS)]
    if bad:
        raise UserError(f"LoRA {path} does not fit this base model ({type(pipe).__name__}): {bad[0][:300]}")
    if not tuner_layers(denoiser, name):
        raise UserError(
            f"LoRA {path} has no layers for this base model's {type(denoiser).__name__}; "
            f"is it a LoRA for another architecture?"
        )
    _activate_alongside(pipe, name, before)
    return adapter_personalization(pipe, name, str(path), info={"format": "lora"})


def _check_finite_adapter(pipe, name: str, source: str | None) -> None:
    """A LoRA with NaN or infinite weights makes NaN predictions, so images of noise or black: refused,
    and taken off the pipeline again (when this loader put it there)."""
    modules = [denoiser_of_pipe(pipe)] + [encoder for _, encoder in text_encoders(pipe)]
    marker = f".{name}."
    for module in modules:
        for param_name, param in module.named_parameters():
            if marker in param_name and not bool(torch.isfinite(param).all()):
                if source is not None and hasattr(pipe, "delete_adapters"):
                    pipe.delete_adapters(name)
                raise UserError(
                    f"LoRA {source or name} holds NaN or infinite weights (e.g. {param_name}); it would make "
                    "images of noise: retrain it (a lower learning rate, or --mixed-precision no)"
                )


def adapter_personalization(pipe, name: str, source: str | None, info: dict) -> Personalization:
    """The personalization that adapter `name` (already on the pipeline) stands for."""
    _check_finite_adapter(pipe, name, source)
    personal = Personalization(kind="lora", source=source, adapter=name, info={**info, "adapter": name})
    personal.prepare(pipe)
    personal.release()  # nothing stays merged between runs
    encoders = [n for n in personal.adapter_components(pipe) if n != "denoiser"]
    others = sorted(adapter_names(pipe) - {name})
    personal.info.update(
        {
            "lora_layers": len(tuner_layers(denoiser_of_pipe(pipe), name)),
            "text_encoder_lora": encoders,
            "other_adapters": others,
        }
    )
    if encoders:
        from steerguide.text_condition import text_encoder_weak_condition

        personal.weak_condition_fn = text_encoder_weak_condition(pipe, personal.text_realizations)
    return personal
