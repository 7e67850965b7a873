"""LoRA (Hu et al. 2021) on the UNet's attention projections, and optionally on the text encoders.

Adapters are added with peft (`unet.add_adapter`), and saved as `pytorch_lora_weights.safetensors`
with the pipeline's own `save_lora_weights`, so that stock `pipe.load_lora_weights(DIR)` reads them.
"""

from __future__ import annotations

from pathlib import Path

from steerguide.errors import UserError
from steerguide.train.base import Base
from steerguide.train.config import TrainConfig
from steerguide.train.methods import Trainable, freeze

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def _add_adapter(module, config: TrainConfig, targets: tuple[str, ...], what: str) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian", target_modules=list(targets)
    )
    try:
        if what == "UNet":
            module.add_adapter(lora)
        else:  # peft directly: transformers 5's `add_adapter` wants a newer peft than diffusers does
            inject_adapter_in_model(lora, module, adapter_name="default")
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise UserError(f"LoRA target modules {', '.join(targets)} do not match the {what}: {e}") from None


def setup(base: Base, config: TrainConfig) -> Trainable:
    freeze(base.unet, base.vae, *base.text_encoders)
    _add_adapter(base.unet, config, config.target_modules, "UNet")
    modules = [base.unet]
    if config.train_text_encoder:
        for encoder in base.text_encoders:
            _add_adapter(encoder, config, config.text_encoder_target_modules, "text encoder")
            modules.append(encoder)
    trained = [config.train_text_encoder] * len(base.text_encoders)
    return Trainable(modules=modules, text_encoders_trained=trained, prompt_token=config.token)


def save(base: Base, config: TrainConfig, trainable: Trainable, out: Path) -> list[str]:
    from peft.utils import get_peft_model_state_dict

    def layers(module) -> dict:
        # PEFT's own key names, which `load_lora_weights` reads for every layer type. (diffusers'
        # `convert_state_dict_to_diffusers` renames only attention projections to the old `lora.down`
        # layout; with wider target modules that mixes two layouts, and loading drops the attention part.)
        return get_peft_model_state_dict(module)

    def metadata(module) -> dict:
        return module.peft_config["default"].to_dict()

    kwargs = {"unet_lora_layers": layers(base.unet), "unet_lora_adapter_metadata": metadata(base.unet)}
    if config.train_text_encoder:
        for i, encoder in enumerate(base.text_encoders):
            name = "text_encoder" if i == 0 else f"text_encoder_{i + 1}"
            kwargs[f"{name}_lora_layers"] = layers(encoder)
            kwargs[f"{name}_lora_adapter_metadata"] = metadata(encoder)
    type(base.pipe).save_lora_weights(out, **kwargs, safe_serialization=True)
    return [WEIGHTS_NAME]
