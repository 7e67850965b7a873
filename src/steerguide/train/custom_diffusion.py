"""Custom Diffusion (Kumari et al. 2023): only the cross-attention key/value projections of the UNet
(`attn2.to_k`, `attn2.to_v`) and the embedding of one new token are trained.

The new token is added to the tokenizer(s): `<sks>` for a token that is already one piece, or the
token itself when the tokenizer splits it into several, initialised from the mean embedding of its
pieces. Outputs: `custom_diffusion.safetensors` with the full fine-tuned k/v weights under the UNet's
own parameter names, and `learned_embeds.safetensors` in the textual-inversion format that stock
`pipe.load_textual_inversion(path)` reads (SDXL: `learned_embeds_2.safetensors` for the second
text encoder, loaded with `text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from steerguide.errors import UserError
from steerguide.train.base import Base, token_pieces
from steerguide.train.config import TrainConfig
from steerguide.train.methods import Trainable, freeze

WEIGHTS_NAME = "custom_diffusion.safetensors"
EMBEDS_NAMES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")


def is_trained(name: str) -> bool:
    """The UNet parameters Custom Diffusion fine-tunes: the cross-attention key and value projections."""
    return ".attn2.to_k." in name or ".attn2.to_v." in name


def modifier_token(tokenizer, token: str) -> str:
    return token if len(token_pieces(tokenizer, token)) > 1 else f"<{token}>"


def setup(base: Base, config: TrainConfig) -> Trainable:
    freeze(base.unet, base.vae, *base.text_encoders)
    count = 0
    for name, param in base.unet.named_parameters():
        if is_trained(name):
            param.requires_grad_(True)
            count += 1
    if not count:
        raise UserError(
            "Custom Diffusion: this UNet has no cross-attention (attn2.to_k / attn2.to_v) to train"
        )

    new = modifier_token(base.tokenizers[0], config.token)
    ids, originals = [], []
    for tokenizer, encoder in zip(base.tokenizers, base.text_encoders, strict=True):
        piece_ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(config.token))
        if new in tokenizer.get_vocab():
            raise UserError(
                f"Custom Diffusion: the token {new!r} is already in the tokenizer; choose another --token"
            )
        tokenizer.add_tokens(new)
        new_id = tokenizer.convert_tokens_to_ids(new)
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is set below
        embeddings = encoder.get_input_embeddings()
        with torch.no_grad():
            embeddings.weight[new_id] = embeddings.weight[piece_ids].mean(0)
        embeddings.weight.requires_grad_(True)
        ids.append(new_id)
        originals.append(embeddings.weight.detach().clone())

    def restore_other_rows() -> None:
        # Only the new token's row may change: AdamW's weight decay and rounding would move the others.
        with torch.no_grad():
            for encoder, new_id, original in zip(base.text_encoders, ids, originals, strict=True):
                weight = encoder.get_input_embeddings().weight
                keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
                keep[new_id] = False
                weight[keep] = original.to(weight.device, weight.dtype)[keep]

    return Trainable(
        modules=[base.unet, *base.text_encoders],
        text_encoders_trained=[True] * len(base.text_encoders),
        prompt_token=new,
        after_step=restore_other_rows,
        notes={"modifier_token": new, "token_ids": ids},
        embeddings=[encoder.get_input_embeddings().weight for encoder in base.text_encoders],
    )


def save(base: Base, config: TrainConfig, trainable: Trainable, out: Path) -> list[str]:
    from safetensors.torch import save_file

    kv = {n: p.detach().float().contiguous() for n, p in base.unet.named_parameters() if is_trained(n)}
    save_file(kv, out / WEIGHTS_NAME, metadata={"format": "pt", "method": "custom-diffusion"})
    names = [WEIGHTS_NAME]
    new = trainable.prompt_token
    token_ids = trainable.notes["token_ids"]
    for encoder, new_id, name in zip(
        base.text_encoders, token_ids, EMBEDS_NAMES[: len(token_ids)], strict=True
    ):
        row = encoder.get_input_embeddings().weight[new_id : new_id + 1].detach().float().contiguous()
        save_file({new: row}, out / name)
        names.append(name)
    return names


def load(pipe, folder: str | Path) -> str:
    """Apply a Custom Diffusion folder to a base pipeline with stock diffusers calls; returns its token.

    (A reference for loaders and tests; `steerguide generate --personalization DIR` has its own.)
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    _, unexpected = pipe.unet.load_state_dict(load_file(folder / WEIGHTS_NAME), strict=False)
    if unexpected:
        raise ValueError(f"{folder / WEIGHTS_NAME} holds parameters this UNet lacks: {unexpected[:3]}")
    with safe_open(folder / EMBEDS_NAMES[0], "pt") as f:
        token = next(iter(f.keys()))
    pipe.load_textual_inversion(folder / EMBEDS_NAMES[0], token=token)
    if getattr(pipe, "text_encoder_2", None) is not None:
        pipe.load_textual_inversion(
            folder / EMBEDS_NAMES[1],
            token=token,
            text_encoder=pipe.text_encoder_2,
            tokenizer=pipe.tokenizer_2,
        )
    return token
