"""What each method trains, shared by the loop: the trainable modules and the token used in prompts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Trainable:
    """The result of a method's `setup`: what the loop optimises and how it writes prompts.

    `modules` go through `accelerator.prepare` (the UNet first); `text_encoders_trained[i]` says whether
    text encoder i is among them (otherwise its prompt embeddings are computed once, frozen).
    `prompt_token` replaces the user's token in prompts (Custom Diffusion's new token); `after_step`
    runs after each optimizer step; `embeddings` are trained word embeddings, optimised at
    `config.embedding_lr` (the rest at `config.lr`).
    """

    modules: list[torch.nn.Module]
    text_encoders_trained: list[bool]
    prompt_token: str
    after_step: Callable[[], None] = lambda: None
    notes: dict = field(default_factory=dict)
    embeddings: list[torch.nn.Parameter] = field(default_factory=list)


def freeze(*modules: torch.nn.Module) -> None:
    for module in modules:
        module.requires_grad_(False)
