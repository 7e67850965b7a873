"""Full and partial fine-tunes: their tensors are swapped into the base model in place and θ_pre is kept
for those that differ (`weak.ParameterDelta`); from a diffusers folder, a file of tensors, or an original
(CompVis/SGM) single-file checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from steerguide.errors import UserError, first_line
from steerguide.loading.pipelines import text_encoders
from steerguide.loading.weight_files import LazyTensors, safetensors_files
from steerguide.personalization import Personalization
from steerguide.weak import ParameterDelta


def swap_in(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Put `state`'s tensors into `module` in place; return θ_pre of the tensors that changed.

    Names follow the module's state dict, which lists tied tensors under every name (T5's `shared.weight`
    and `encoder.embed_tokens.weight`); θ_pre is keyed by the parameter's own name, once.
    """
    own = module.state_dict(keep_vars=True)
    for name, tensor in list(own.items()):  # a layer wrapped by peft (other adapters) keeps its own name
        own.setdefault(name.replace(".base_layer.", "."), tensor)
    canonical = {id(t): n for n, t in [*module.named_parameters(), *module.named_buffers()]}
    unknown = [k for k in state if k not in own]
    if unknown:
        raise UserError(
            f"{what} has {len(unknown)} tensors this base model lacks (e.g. {unknown[0]}); "
            "is it a fine-tune of another base model?"
        )
    pre: dict[str, torch.Tensor] = {}
    for name in state:
        target = own[name]
        key = canonical.get(id(target), name)
        if key in pre:
            continue  # a tied alias of a tensor already swapped in
        value = state[name]
        if tuple(value.shape) != tuple(target.shape):
            raise UserError(
                f"{what}: tensor {name} has shape {tuple(value.shape)}, the base model "
                f"{tuple(target.shape)}; is it a fine-tune of another base model?"
            )
        value = value.to(device=target.device, dtype=target.dtype)
        if not torch.equal(value, target.data):
            pre[key] = target.data
            target.data = value
    return pre


def install_tensors(
    pipe,
    denoiser_state: dict[str, torch.Tensor],
    *,
    kind: str,
    source: Path,
    text_encoder_states: dict[str, dict[str, torch.Tensor]] | None = None,
    text_deltas: dict[str, ParameterDelta] | None = None,
    info: dict | None = None,
) -> Personalization:
    from steerguide.block import denoiser_of

    denoiser = denoiser_of(pipe)
    pre = swap_in(denoiser, denoiser_state, str(source))
    delta = ParameterDelta(denoiser, pre)
    personal = Personalization(
        kind=kind,
        source=str(source),
        denoiser_delta=delta,
        info={"differing_tensors": len(delta.names), "differing_params": delta.numel, **(info or {})},
    )
    encoder_deltas = {}
    for name, state in (text_encoder_states or {}).items():
        te_pre = swap_in(getattr(pipe, name), state, f"{source} ({name})")
        if te_pre:
            encoder_deltas[name] = ParameterDelta(getattr(pipe, name), te_pre)
    encoder_deltas.update(text_deltas or {})
    personal.text_realizations = encoder_deltas
    if encoder_deltas:
        from steerguide.text_condition import text_encoder_weak_condition

        personal.info["text_encoder_finetuned"] = sorted(encoder_deltas)
        personal.weak_condition_fn = text_encoder_weak_condition(pipe, encoder_deltas)
    if not delta.names and not encoder_deltas:
        personal.unload(pipe)
        raise UserError(f"{source} is identical to the base model: there is no personalization to guide with")
    return personal


def strip_prefix(state: dict[str, torch.Tensor], denoiser_names: set[str]) -> dict[str, torch.Tensor]:
    """Denoiser tensors of a single-file state dict, whatever prefix it uses ("unet.", "transformer.", none)."""
    for prefix in ("", "unet.", "transformer.", "model.", "module."):
        picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if picked and all(k in denoiser_names for k in picked):
            return picked
    return {}


def load_finetuned_folder(pipe, folder: Path) -> Personalization:
    """A diffusers pipeline folder (DreamBooth) or a bare denoiser folder holding the fine-tuned weights.

    Safetensors files are compared with the base tensor by tensor (only the differing ones are kept);
    other formats are loaded with the model class's `from_pretrained`.
    """
    from steerguide.block import denoiser_of

    denoiser = denoiser_of(pipe)
    denoiser_cls = type(denoiser)
    sub = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    is_pipeline = (folder / "model_index.json").is_file()
    denoiser_dir = folder / sub if is_pipeline or (folder / sub).is_dir() else folder
    text_states: dict[str, Mapping[str, torch.Tensor]] = {}
    try:
        files = safetensors_files(denoiser_dir)
        if files is not None:
            state: Mapping[str, torch.Tensor] = LazyTensors(files)
        else:
            ft = denoiser_cls.from_pretrained(denoiser_dir, dtype=denoiser.dtype)
            state = ft.state_dict()
            del ft
        if is_pipeline:
            for name, encoder in text_encoders(pipe):
                if not (folder / name).is_dir():
                    continue
                files = safetensors_files(folder / name)
                if files is not None:
                    text_states[name] = LazyTensors(files)
                else:
                    ft_encoder = type(encoder).from_pretrained(folder, subfolder=name, dtype=encoder.dtype)
                    text_states[name] = ft_encoder.state_dict()
    except (OSError, ValueError) as e:
        first = first_line(e) or type(e).__name__
        raise UserError(f"cannot load the fine-tuned model in {folder}: {first[:300]}") from None
    return install_tensors(
        pipe,
        state,
        kind="full",
        source=folder,
        text_encoder_states=text_states,
        info={"format": "diffusers-folder"},
    )


def check_denoiser_keys(denoiser, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """One line naming a key of `state` that the denoiser lacks (under any of the usual prefixes)."""
    names = set(denoiser.state_dict().keys())
    prefixes = ("", "unet.", "transformer.", "model.", "module.")
    unknown = [k for k in state if not any(k.startswith(p) and k[len(p) :] in names for p in prefixes)]
    if unknown:
        raise UserError(
            f"{path} is neither a LoRA nor a checkpoint of this base model's {type(denoiser).__name__}: "
            f"{len(unknown)} of its {len(state)} tensors have no place in it (e.g. {unknown[0]!r})"
        )


def load_original_checkpoint(pipe, path: Path) -> Personalization:
    """A fine-tune saved in the original (CompVis/SGM) single-file layout: convert its denoiser with diffusers."""
    from steerguide.block import denoiser_of

    denoiser = denoiser_of(pipe)
    sub = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    base_dir = pipe.config.get("_name_or_path")
    try:
        ft = type(denoiser).from_single_file(
            str(path), config=str(base_dir), subfolder=sub, dtype=denoiser.dtype
        )
    except Exception as e:
        first = first_line(e) or type(e).__name__
        raise UserError(f"cannot convert the single-file checkpoint {path}: {first[:300]}") from None
    return install_tensors(pipe, ft.state_dict(), kind="full", source=path, info={"format": "single-file"})
