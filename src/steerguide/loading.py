"""Base model + personalization → a pipeline ready for guidance.

`load_pipeline` takes a hub id, a local diffusers folder or a single-file checkpoint. `load_personalization`
works out what a personalization is and installs it so that θ_ω is cheap:

- LoRA (a file or folder in the diffusers, PEFT or kohya format, whatever `load_lora_weights` accepts)
  → loaded as adapter "personal", with per-row scales on the denoiser (`weak.RowScaledLora`);
- a full fine-tune (a diffusers pipeline folder, a denoiser folder, or a single file of denoiser
  weights) → its tensors replace the base ones and θ_pre is kept for those that differ
  (`weak.ParameterDelta`);
- a partial fine-tune (a file holding some denoiser tensors, e.g. Custom Diffusion's cross-attention
  k/v, in our layout or in diffusers' `save_attn_procs` layout) → the same, for those tensors only;
  a learned token embedding beside it (`learned_embeds.safetensors`) is loaded as a textual inversion.
"""

from __future__ import annotations

import json
import logging
import os
import warnings as pywarnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from steerguide.errors import UserError
from steerguide.families import GENERIC, family_of
from steerguide.personalization import Personalization
from steerguide.weak import ParameterDelta
from steerguide.weak.gate import guard_modules
from steerguide.weak.lora import tuner_layers

ADAPTER = "personal"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
LORA_FILE = "pytorch_lora_weights.safetensors"
CUSTOM_DIFFUSION_FILE = "custom_diffusion.safetensors"
LEARNED_EMBEDS_FILE = "learned_embeds.safetensors"
DIFFUSERS_CUSTOM_DIFFUSION_FILES = (
    "pytorch_custom_diffusion_weights.safetensors",
    "pytorch_custom_diffusion_weights.bin",
)


# -- devices and dtypes ---------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but this machine has no CUDA GPU (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} GPUs")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but MPS is not available here")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of float32, float16, bfloat16")
    return DTYPES[dtype]


# -- the base pipeline ----------------------------------------------------------------------------


def _null_components(folder: Path) -> dict:
    """Components a folder's model_index.json leaves out ([null, null]), to pass as None (SD3 without T5)."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return {}
    index = json.loads(index_path.read_text())
    return {k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]}


def _pipeline_class_for_checkpoint(keys: list[str]):
    import diffusers

    if any(k.startswith("conditioner.embedders.1") for k in keys):
        return diffusers.StableDiffusionXLPipeline
    if any("joint_blocks" in k for k in keys):
        return diffusers.StableDiffusion3Pipeline
    return diffusers.StableDiffusionPipeline


def set_scheduler(pipe, name: str | None) -> None:
    """Swap the pipeline's scheduler for diffusers' `<name>` (with or without the 'Scheduler' suffix)."""
    if not name:
        return
    pipe.scheduler = scheduler_class(name).from_config(pipe.scheduler.config)


def scheduler_class(name: str):
    """diffusers' scheduler class `<name>` (with or without the 'Scheduler' suffix), or one line naming
    the known ones (checked before any model loads)."""
    import diffusers

    cls_name = name if name.endswith("Scheduler") else name + "Scheduler"
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        known = sorted(
            n[: -len("Scheduler")] for n in dir(diffusers) if n.endswith("Scheduler") and n[0].isupper()
        )
        raise UserError(f"unknown scheduler {name!r}; known: {', '.join(k for k in known if k)}")
    return cls


def load_pipeline(
    base: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    scheduler: str | None = None,
):
    """Load a text-to-image pipeline from a hub id, a local diffusers folder or a single-file checkpoint."""
    import diffusers

    from steerguide.bases import resolve_base

    base = resolve_base(base)  # a named base ("toy": the toy world's) is its folder
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    path = Path(base)
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise UserError(
                    f"base model folder {path} has no model_index.json (not a diffusers pipeline)"
                )
            pipe = diffusers.DiffusionPipeline.from_pretrained(
                path, dtype=torch_dtype, **_null_components(path)
            )
        elif path.is_file():
            keys = list(_read_state_dict(path).keys())
            pipe = _pipeline_class_for_checkpoint(keys).from_single_file(str(path), dtype=torch_dtype)
        elif str(base).startswith((".", "/", "~")) or os.sep in str(base) and str(base).count("/") > 1:
            raise UserError(f"base model not found: {base} (no such file or folder)")
        else:
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(base), dtype=torch_dtype)
    except UserError:
        raise
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not path.exists():
            raise UserError(
                f"base model {base!r} not found: not a local folder or file, and the hub is "
                f"unreachable or has no such model offline ({first})"
            ) from None
        raise UserError(f"cannot load base model {base}: {first}") from None
    for name in ("unet", "transformer"):
        if getattr(pipe, name, None) is not None:
            break
    else:
        raise UserError(
            f"{base} is a {type(pipe).__name__}, not a text-to-image pipeline with a unet or transformer"
        )
    set_scheduler(pipe, scheduler)
    pipe.to(dev)
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    return pipe


# -- reading weight files ---------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .bin / .ckpt file; a corrupt or foreign file is a UserError."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
    except Exception as e:  # safetensors, pickle and zip errors have no common base class
        raise UserError(f"cannot read {path}: corrupt or not a weights file ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a dictionary of tensors")
    if not state:
        raise UserError(f"{path} holds no tensors")
    return state


def _is_lora_key(key: str) -> bool:
    return any(
        tag in key
        for tag in (
            "lora_A",
            "lora_B",
            "lora_down",
            "lora_up",
            "lora.down",
            "lora.up",
            "lora_unet_",
            "lora_te",
            "lora_linear_layer",
        )
    )


# -- installing a personalization ---------------------------------------------------------------------


@contextmanager
def _captured_warnings(logger_names: tuple[str, ...]) -> Iterator[list[str]]:
    """Collect the warnings of these loggers (instead of printing them), whatever their verbosity was."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    collector = Collect(level=logging.WARNING)
    saved = []
    for name in logger_names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.handlers[:], logger.propagate))
        logger.handlers = [collector]
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    try:
        yield messages
    finally:
        for logger, level, handlers, propagate in saved:
            logger.handlers = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def _text_encoders(pipe) -> list[tuple[str, torch.nn.Module]]:
    return [(n, getattr(pipe, n)) for n in family_of(pipe).text_encoders if getattr(pipe, n, None) is not None]


_PIPELINE_LORA_PREFIXES = GENERIC.lora_prefixes  # every family's: a file with none of them is PEFT's own


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
    modules = [denoiser_of_pipe(pipe)] + [m for _, m in _text_encoders(pipe)]
    return {id(layer): list(layer.active_adapters) for m in modules for layer in tuner_layers(m)}


def denoiser_of_pipe(pipe):
    from steerguide.denoiser import denoiser_of

    return denoiser_of(pipe)


def _activate_alongside(pipe, name: str, before: dict[int, list[str]]) -> None:
    """Loading an adapter makes it the only active one; keep the ones that were active before, too.

    Layer-level `set_adapter` keeps every adapter's own scale (its `set_adapters` weight).
    """
    everywhere = sorted({a for names in before.values() for a in names})
    modules = [denoiser_of_pipe(pipe)] + [m for _, m in _text_encoders(pipe)]
    for module in modules:
        for layer in tuner_layers(module):
            wanted = before.get(id(layer), everywhere)
            own = {k for n in layer.adapter_layer_names for k in getattr(layer, n, {})}
            names = [a for a in dict.fromkeys([*wanted, name]) if a in own]
            if names:
                layer.set_adapter(names, inference_mode=True)


def _adapter_names(pipe) -> set[str]:
    modules = [denoiser_of_pipe(pipe)] + [m for _, m in _text_encoders(pipe)]
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
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
    laid_out = [k for k in state if k.startswith(_PIPELINE_LORA_PREFIXES)]
    if laid_out and not any(k.startswith(family.lora_prefixes) for k in laid_out):
        raise UserError(
            f"LoRA {path} does not fit this base model ({type(pipe).__name__}): its keys are laid out for "
            f"another kind of model (e.g. {laid_out[0]!r})"
        )


def _install_lora(pipe, path: Path, name: str = ADAPTER) -> Personalization:
    denoiser = denoiser_of_pipe(pipe)
    if name in _adapter_names(pipe):
        raise UserError(
            f"the pipeline already has an adapter named {name!r}; load the personalization under another "
            "name (adapter_name=...), or pass adapter_name with no path to use that adapter"
        )
    before = _active_adapters(pipe)
    source = path if path.is_dir() else path.parent
    kwargs = {} if path.is_dir() else {"weight_name": path.name}
    state = None if path.is_dir() else _read_state_dict(path)
    if state is not None:
        _check_lora_family(pipe, path, state)
    bare_peft = state is not None and not any(k.startswith(_PIPELINE_LORA_PREFIXES) for k in state)
    peft_config = None
    if bare_peft and (path.parent / "adapter_config.json").is_file():
        peft_config = json.loads((path.parent / "adapter_config.json").read_text())
    with (
        _captured_warnings(("diffusers", "peft")) as warnings,
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
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
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
    return _adapter_personalization(pipe, name, str(path), info={"format": "lora"})


def _check_finite_adapter(pipe, name: str, source: str | None) -> None:
    """A LoRA with NaN or infinite weights makes NaN predictions, so images of noise or black: refused,
    and taken off the pipeline again (when this loader put it there)."""
    modules = [denoiser_of_pipe(pipe)] + [encoder for _, encoder in _text_encoders(pipe)]
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


def _adapter_personalization(pipe, name: str, source: str | None, info: dict) -> Personalization:
    """The personalization that adapter `name` (already on the pipeline) stands for."""
    _check_finite_adapter(pipe, name, source)
    personal = Personalization(kind="lora", source=source, adapter=name, info={**info, "adapter": name})
    personal.prepare(pipe)
    personal.release()  # nothing stays merged between runs
    encoders = [n for n in personal.adapter_components(pipe) if n != "denoiser"]
    others = sorted(_adapter_names(pipe) - {name})
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


class _LazyTensors(Mapping):
    """The tensors of safetensors files, read one at a time on access (a fine-tuned T5-XXL is compared
    with the base tensor by tensor, never loaded whole only to find it unchanged)."""

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._where[key].get_tensor(key)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _weight_files(folder: Path) -> list[Path] | None:
    """The safetensors files of a diffusers/transformers model folder (sharded or not); None if none."""
    for index_name in ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"):
        index = folder / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / f for f in files]
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return [folder / name]
    return None


def _swap_in(
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


def _install_tensors(
    pipe,
    denoiser_state: dict[str, torch.Tensor],
    *,
    kind: str,
    source: Path,
    text_encoder_states: dict[str, dict[str, torch.Tensor]] | None = None,
    text_deltas: dict[str, ParameterDelta] | None = None,
    info: dict | None = None,
) -> Personalization:
    from steerguide.denoiser import denoiser_of

    denoiser = denoiser_of(pipe)
    pre = _swap_in(denoiser, denoiser_state, str(source))
    delta = ParameterDelta(denoiser, pre)
    personal = Personalization(
        kind=kind,
        source=str(source),
        denoiser_delta=delta,
        info={"differing_tensors": len(delta.names), "differing_params": delta.numel, **(info or {})},
    )
    encoder_deltas = {}
    for name, state in (text_encoder_states or {}).items():
        te_pre = _swap_in(getattr(pipe, name), state, f"{source} ({name})")
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


def _strip_prefix(state: dict[str, torch.Tensor], denoiser_names: set[str]) -> dict[str, torch.Tensor]:
    """Denoiser tensors of a single-file state dict, whatever prefix it uses ("unet.", "transformer.", none)."""
    for prefix in ("", "unet.", "transformer.", "model.", "module."):
        picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if picked and all(k in denoiser_names for k in picked):
            return picked
    return {}


_CUSTOM_DIFFUSION_RENAMES = {
    ".processor.to_k_custom_diffusion.": ".to_k.",
    ".processor.to_v_custom_diffusion.": ".to_v.",
    ".processor.to_q_custom_diffusion.": ".to_q.",
    ".processor.to_out_custom_diffusion.0.": ".to_out.0.",
}


def _from_custom_diffusion_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' `save_attn_procs` names (`…attn2.processor.to_k_custom_diffusion.weight`) → UNet names."""
    out = {}
    for key, value in state.items():
        for old, new in _CUSTOM_DIFFUSION_RENAMES.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def _load_learned_embeds(pipe, folder: Path) -> tuple[list[str], dict[str, ParameterDelta]]:
    """Learned token embeddings beside a Custom Diffusion / textual-inversion personalization:
    `learned_embeds.safetensors` for the (first) text encoder, `learned_embeds_2.safetensors` for SDXL's
    second one.

    The learned embedding is part of Δ: the pretrained model has no such token, and its absence is
    represented, as transformers initializes a new token (`mean_resizing`), by the mean of the pretrained
    vocabulary's embeddings. Returns the tokens and, per text encoder, θ_pre of its embedding matrix.
    """
    tokens: list[str] = []
    deltas: dict[str, ParameterDelta] = {}
    targets = [
        (LEARNED_EMBEDS_FILE, "text_encoder", "tokenizer"),
        (LEARNED_EMBEDS_FILE.replace(".safetensors", "_2.safetensors"), "text_encoder_2", "tokenizer_2"),
    ]
    for file_name, encoder, tokenizer in targets:
        path = folder / file_name
        if not path.is_file() or getattr(pipe, encoder, None) is None:
            continue
        state = _read_state_dict(path)
        names = [k for k in state if k not in ("emb_params", "string_to_param")]
        text_encoder = getattr(pipe, encoder)
        pretrained_rows = text_encoder.get_input_embeddings().weight.shape[0]
        try:
            pipe.load_textual_inversion(
                str(path), text_encoder=getattr(pipe, encoder), tokenizer=getattr(pipe, tokenizer)
            )
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load the learned token embedding {path}: {first[:300]}") from None
        tokens += [n for n in names if n not in tokens]
        embeddings = text_encoder.get_input_embeddings().weight
        ids = getattr(pipe, tokenizer).convert_tokens_to_ids(names)
        pre = embeddings.data.clone()
        pre[ids] = embeddings.data[:pretrained_rows].mean(dim=0)
        name = next(n for n, p in text_encoder.named_parameters() if p is embeddings)
        deltas[encoder] = ParameterDelta(text_encoder, {name: pre})
    return tokens, deltas


def _load_finetuned_folder(pipe, folder: Path) -> Personalization:
    """A diffusers pipeline folder (DreamBooth) or a bare denoiser folder holding the fine-tuned weights.

    Safetensors files are compared with the base tensor by tensor (only the differing ones are kept);
    other formats are loaded with the model class's `from_pretrained`.
    """
    from steerguide.denoiser import denoiser_of

    denoiser = denoiser_of(pipe)
    denoiser_cls = type(denoiser)
    sub = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    is_pipeline = (folder / "model_index.json").is_file()
    denoiser_dir = folder / sub if is_pipeline or (folder / sub).is_dir() else folder
    text_states: dict[str, Mapping[str, torch.Tensor]] = {}
    try:
        files = _weight_files(denoiser_dir)
        if files is not None:
            state: Mapping[str, torch.Tensor] = _LazyTensors(files)
        else:
            ft = denoiser_cls.from_pretrained(denoiser_dir, dtype=denoiser.dtype)
            state = ft.state_dict()
            del ft
        if is_pipeline:
            for name, encoder in _text_encoders(pipe):
                if not (folder / name).is_dir():
                    continue
                files = _weight_files(folder / name)
                if files is not None:
                    text_states[name] = _LazyTensors(files)
                else:
                    ft_encoder = type(encoder).from_pretrained(folder, subfolder=name, dtype=encoder.dtype)
                    text_states[name] = ft_encoder.state_dict()
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the fine-tuned model in {folder}: {first[:300]}") from None
    return _install_tensors(
        pipe,
        state,
        kind="full",
        source=folder,
        text_encoder_states=text_states,
        info={"format": "diffusers-folder"},
    )


def load_personalization(
    pipe, path: str | os.PathLike | None, *, adapter_name: str | None = None
) -> Personalization:
    """Install the personalization at `path` on `pipe`; returns the `Personalization` that
    `steerguide.denoiser.guided` uses to realize θ_ω. `None` gives the base model alone (CFG only).

    θ_pre is the pipeline as it is without this personalization: a personalization loaded before by this
    function is taken off first (switching subjects guides the new one with the true pretrained weights),
    while LoRAs the user loaded (style, detail) stay on and are part of θ_pre. `adapter_name` names the
    personalization's adapter: the name to load a LoRA under (default "personal"), or, with no `path`, an
    adapter already loaded on the pipeline that is the personalization.
    """
    previous = getattr(pipe, "_steerguide_personalization", None)
    if previous is not None:
        previous.unload(pipe)
        pipe._steerguide_personalization = None
    personal = _load_personalization(pipe, path, adapter_name)
    pipe._steerguide_personalization = personal if personal.kind != "none" else None
    if personal.kind != "none":  # calls of these modules are counted from now on (`weak.gate.Guard`)
        guard_modules(denoiser_of_pipe(pipe), *(m for _, m in _text_encoders(pipe)))
    return personal


def _load_personalization(pipe, path, adapter_name: str | None) -> Personalization:
    from steerguide.denoiser import denoiser_of

    if path is None:
        if adapter_name is None:
            return Personalization(kind="none")
        if adapter_name not in _adapter_names(pipe) or not tuner_layers(denoiser_of(pipe), adapter_name):
            known = ", ".join(sorted(_adapter_names(pipe))) or "none"
            raise UserError(
                f"the pipeline's denoiser has no adapter named {adapter_name!r} (adapters: {known})"
            )
        return _adapter_personalization(pipe, adapter_name, None, info={"format": "adapter on the pipeline"})
    name = adapter_name or ADAPTER
    path = Path(path)
    if not path.exists():
        raise UserError(f"personalization not found: {path}")
    denoiser = denoiser_of(pipe)
    if path.is_dir():
        files = {p.name for p in path.iterdir()}
        if "adapter_config.json" in files:
            weights = [p for p in path.iterdir() if p.name.startswith("adapter_model")]
            if len(weights) != 1:
                raise UserError(f"{path} has adapter_config.json but not one adapter_model.* weights file")
            return _install_lora(pipe, weights[0], name)
        if "model_index.json" in files or "config.json" in files or "unet" in files or "transformer" in files:
            return _load_finetuned_folder(pipe, path)
        if CUSTOM_DIFFUSION_FILE in files or any(f in files for f in DIFFUSERS_CUSTOM_DIFFUSION_FILES):
            file_name = (
                CUSTOM_DIFFUSION_FILE
                if CUSTOM_DIFFUSION_FILE in files
                else next(f for f in DIFFUSERS_CUSTOM_DIFFUSION_FILES if f in files)
            )
            state = _from_custom_diffusion_layout(_read_state_dict(path / file_name))
            _check_denoiser_keys(denoiser, state, path / file_name)
            tokens, token_deltas = _load_learned_embeds(pipe, path)
            try:
                personal = _install_tensors(
                    pipe,
                    state,
                    kind="partial",
                    source=path,
                    info={"format": "custom-diffusion", "tokens_added": tokens},
                    text_deltas=token_deltas,
                )
            except UserError:
                if tokens:
                    pipe.unload_textual_inversion(tokens)
                raise
            personal.tokens = tokens
            return personal
        if LORA_FILE in files:
            return _install_lora(pipe, path / LORA_FILE, name)
        weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(weights) == 1:
            path = weights[0]
        else:
            raise UserError(
                f"{path} is not a LoRA, a fine-tuned model or a Custom Diffusion folder "
                f"(expected {LORA_FILE}, model_index.json, config.json or {CUSTOM_DIFFUSION_FILE})"
            )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"{path} is not a weights file (expected one of {', '.join(WEIGHT_SUFFIXES)})")
    state = _read_state_dict(path)
    if any(_is_lora_key(k) for k in state):
        return _install_lora(pipe, path, name)
    names = set(denoiser.state_dict().keys())
    picked = _strip_prefix(_from_custom_diffusion_layout(state), names)
    if picked:
        kind = "full" if len(picked) == len(names) else "partial"
        return _install_tensors(pipe, picked, kind=kind, source=path, info={"format": "tensors"})
    if any(k.startswith("model.diffusion_model.") for k in state):
        return _load_original_checkpoint(pipe, path)
    _check_denoiser_keys(denoiser, _from_custom_diffusion_layout(state), path)
    raise UserError(
        f"{path} is neither a LoRA nor a checkpoint of this base model's {type(denoiser).__name__}"
    )


def _check_denoiser_keys(denoiser, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """One line naming a key of `state` that the denoiser lacks (under any of the usual prefixes)."""
    names = set(denoiser.state_dict().keys())
    prefixes = ("", "unet.", "transformer.", "model.", "module.")
    unknown = [k for k in state if not any(k.startswith(p) and k[len(p) :] in names for p in prefixes)]
    if unknown:
        raise UserError(
            f"{path} is neither a LoRA nor a checkpoint of this base model's {type(denoiser).__name__}: "
            f"{len(unknown)} of its {len(state)} tensors have no place in it (e.g. {unknown[0]!r})"
        )


def _load_original_checkpoint(pipe, path: Path) -> Personalization:
    """A fine-tune saved in the original (CompVis/SGM) single-file layout: convert its denoiser with diffusers."""
    from steerguide.denoiser import denoiser_of

    denoiser = denoiser_of(pipe)
    sub = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    base_dir = getattr(pipe, "_steerguide_base", None) or pipe.config.get("_name_or_path")
    try:
        ft = type(denoiser).from_single_file(
            str(path), config=str(base_dir), subfolder=sub, dtype=denoiser.dtype
        )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot convert the single-file checkpoint {path}: {first[:300]}") from None
    return _install_tensors(pipe, ft.state_dict(), kind="full", source=path, info={"format": "single-file"})
