"""Custom Diffusion: its cross-attention tensors in our layout or diffusers' `save_attn_procs` layout, and the
learned token embedding beside them, loaded as a textual inversion (part of Δ)."""

from __future__ import annotations

from pathlib import Path

import torch

from steerguide.errors import UserError, first_line
from steerguide.loading.weight_files import read_state_dict
from steerguide.weak import ParameterDelta

CUSTOM_DIFFUSION_FILE = "custom_diffusion.safetensors"

LEARNED_EMBEDS_FILE = "learned_embeds.safetensors"

DIFFUSERS_CUSTOM_DIFFUSION_FILES = (
    "pytorch_custom_diffusion_weights.safetensors",
    "pytorch_custom_diffusion_weights.bin",
)

_CUSTOM_DIFFUSION_RENAMES = {
    ".processor.to_k_custom_diffusion.": ".to_k.",
    ".processor.to_v_custom_diffusion.": ".to_v.",
    ".processor.to_q_custom_diffusion.": ".to_q.",
    ".processor.to_out_custom_diffusion.0.": ".to_out.0.",
}


def from_custom_diffusion_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' `save_attn_procs` names (`…attn2.processor.to_k_custom_diffusion.weight`) → UNet names."""
    out = {}
    for key, value in state.items():
        for old, new in _CUSTOM_DIFFUSION_RENAMES.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def load_learned_embeds(pipe, folder: Path) -> tuple[list[str], dict[str, ParameterDelta]]:
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
        state = read_state_dict(path)
        names = [k for k in state if k not in ("emb_params", "string_to_param")]
        text_encoder = getattr(pipe, encoder)
        pretrained_rows = text_encoder.get_input_embeddings().weight.shape[0]
        try:
            pipe.load_textual_inversion(
                str(path), text_encoder=getattr(pipe, encoder), tokenizer=getattr(pipe, tokenizer)
            )
        except Exception as e:
            first = first_line(e) or type(e).__name__
            raise UserError(f"cannot load the learned token embedding {path}: {first[:300]}") from None
        tokens += [n for n in names if n not in tokens]
        embeddings = text_encoder.get_input_embeddings().weight
        ids = getattr(pipe, tokenizer).convert_tokens_to_ids(names)
        pre = embeddings.data.clone()
        pre[ids] = embeddings.data[:pretrained_rows].mean(dim=0)
        name = next(n for n, p in text_encoder.named_parameters() if p is embeddings)
        deltas[encoder] = ParameterDelta(text_encoder, {name: pre})
    return tokens, deltas
