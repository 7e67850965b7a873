"""Metrics of the DreamBench protocol, and the registry where plugins add theirs (the toy world's judges).

- DINO (subject fidelity): mean cosine similarity between the ViT CLS embedding of a generated image and
  that of each real image of the subject (DreamBooth uses DINO ViT-S/16).
- CLIP-I (subject fidelity): the same with CLIP image embeddings.
- CLIP-T (text alignment): cosine similarity of the CLIP image embedding with the prompt's text embedding.

Every metric has `name` (the result column), `axis` ("fidelity" or "text"), `prepare(references)` (run
once per subject: embeds the real images) and `score(images, prompts, prepared) -> list[float]`.
Models are hub ids or local folders, loaded with transformers' `from_pretrained` (offline here).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from steerguide.errors import UserError, first_line
from steerguide.plugins import Registry

if TYPE_CHECKING:
    import torch

DEFAULT_MODELS = {
    "dino": "facebook/dino-vits16",
    "clip_i": "openai/clip-vit-base-patch32",
    "clip_t": "openai/clip-vit-base-patch32",
}
FIDELITY, TEXT = "fidelity", "text"


@functools.cache
def _hub_reachable() -> bool:
    """One quick connection to the hub (3 s at most): offline, transformers would retry each file for about
    100 s before failing."""
    import os
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
    except OSError:
        return False
    return True


def _offline() -> bool:
    import huggingface_hub.constants as hub

    return bool(hub.HF_HUB_OFFLINE) or not _hub_reachable()


def check_available(kind: str, model: str, metric: str) -> None:
    """A hub id must be in the local cache when the hub cannot be reached: say so at once, and how to
    give local weights, instead of a long series of retries."""
    from pathlib import Path

    if Path(model).exists():
        return
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise UserError(f"cannot load the {kind} model {model!r}: no such folder")
    if not _offline():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return  # cached: transformers loads it offline
    except ValueError:  # not a valid repo id
        pass
    raise UserError(
        f"cannot load the {kind} model {model!r}: the hub is unreachable (or HF_HUB_OFFLINE=1) and it is not "
        f"in the local cache; give local weights with --model {metric}=FOLDER (a folder written by "
        "save_pretrained, or a snapshot copied from a machine online), or leave the metric out of --metrics"
    )


def _load(kind: str, model: str, cls, metric: str):
    """`cls.from_pretrained(model)`, from the local cache alone when the hub is out of reach."""
    from pathlib import Path

    check_available(kind, model, metric)
    local = not Path(model).exists() and _offline()  # cached: no lookups, each would wait for the network
    try:
        return cls.from_pretrained(model, **({"local_files_only": True} if local else {}))
    except (OSError, ValueError, KeyError) as e:
        first = first_line(e) or type(e).__name__
        raise UserError(f"cannot load the {kind} model {model!r}: {first}") from None


def _features(out: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected feature; 4.x a tensor.
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _no_grad(method):
    """`torch.no_grad()` as a decorator that imports torch on the first call, not with this module (which
    plugins import to register their metrics)."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return method(*args, **kwargs)

    return wrapper


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def mean_cosine(embeddings: torch.Tensor, references: torch.Tensor) -> list[float]:
    """Per row of `embeddings`: the mean cosine similarity to the rows of `references`."""
    import torch

    a = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    b = torch.nn.functional.normalize(references.float(), dim=-1)
    return (a @ b.T).mean(dim=1).tolist()


class Metric:
    name: str
    axis: str
    raw_prompts = False  # True: score the prompt as sampled, unique token included (the toy judges)

    def prepare(self, references: list) -> Any:
        return None

    def score(self, images: list, prompts: list[str], prepared: Any) -> list[float]:
        raise NotImplementedError


class _ImageEmbeddingMetric(Metric):
    axis = FIDELITY

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 16):
        self.model_id, self.device, self.batch_size = model, device, batch_size
        self._model = self._processor = None

    def _ensure(self) -> None:
        raise NotImplementedError

    def _embed_batch(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @_no_grad
    def embed(self, images: list) -> torch.Tensor:
        import torch

        self._ensure()
        out = []
        for chunk in _batches([im.convert("RGB") for im in images], self.batch_size):
            pixels = self._processor(images=chunk, return_tensors="pt")["pixel_values"]
            out.append(self._embed_batch(pixels.to(self.device, self._model.dtype)).float().cpu())
        return torch.cat(out)

    def prepare(self, references: list) -> torch.Tensor:
        if not references:
            raise UserError(f"metric {self.name}: the subject has no reference images")
        return self.embed(references)

    def score(self, images: list, prompts: list[str], prepared: torch.Tensor) -> list[float]:
        return mean_cosine(self.embed(images), prepared)


class DinoMetric(_ImageEmbeddingMetric):
    """Subject fidelity: mean cosine of ViT CLS embeddings (the last hidden state's first token)."""

    name = "dino"

    def _ensure(self) -> None:
        if self._model is None:
            from transformers import AutoImageProcessor, AutoModel

            self._processor = _load(
                "DINO", self.model_id, AutoImageProcessor, "dino"
            )
            self._model = (
                _load("DINO", self.model_id, AutoModel, "dino")
                .to(self.device)
                .eval()
            )

    def _embed_batch(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._model(pixel_values=pixel_values).last_hidden_state[:, 0]


@functools.lru_cache(maxsize=4)  # CLIP-I and CLIP-T usually share one model: load it once
def _load_clip(model_id: str, device: str):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    processor = _load("CLIP", model_id, CLIPImageProcessor, "clip_i")
    tokenizer = _load("CLIP", model_id, CLIPTokenizer, "clip_t")
    model = _load("CLIP", model_id, CLIPModel, "clip_i").to(device).eval()
    return model, processor, tokenizer


class ClipImageMetric(_ImageEmbeddingMetric):
    """Subject fidelity: mean cosine of CLIP image embeddings."""

    name = "clip_i"

    def _ensure(self) -> None:
        if self._model is None:
            self._model, self._processor, _ = _load_clip(self.model_id, self.device)

    def _embed_batch(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _features(self._model.get_image_features(pixel_values=pixel_values))


class ClipTextMetric(Metric):
    """Text alignment: cosine of each image's CLIP embedding with its prompt's CLIP text embedding."""

    name = "clip_t"
    axis = TEXT

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 16):
        self.model_id, self.device, self.batch_size = model, device, batch_size
        self._model = None

    @_no_grad
    def score(self, images: list, prompts: list[str], prepared: Any = None) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        import torch

        if self._model is None:
            self._model, self._processor, self._tokenizer = _load_clip(self.model_id, self.device)
        scores: list[float] = []
        for start in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            texts = list(prompts[start : start + self.batch_size])
            pixels = self._processor(images=ims, return_tensors="pt")["pixel_values"]
            image_emb = _features(
                self._model.get_image_features(pixel_values=pixels.to(self.device, self._model.dtype))
            )
            tokens = self._tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(
                self.device
            )
            text_emb = _features(self._model.get_text_features(**tokens))
            a = torch.nn.functional.normalize(image_emb.float(), dim=-1)
            b = torch.nn.functional.normalize(text_emb.float(), dim=-1)
            scores.extend((a * b).sum(dim=-1).cpu().tolist())
        return scores


# Plugins add theirs (the toy world's judges): a Metric class, or "package.module:Class" to import on use.
METRICS: Registry[type[Metric] | str] = Registry("metric")
METRICS.register("dino", DinoMetric)
METRICS.register("clip_i", ClipImageMetric)
METRICS.register("clip_t", ClipTextMetric)


def metric_class(name: str) -> type[Metric]:
    """The class of a registered metric or of a "package.module:Class" name."""
    entry = METRICS.lookup(name) if name in METRICS else name
    return entry if isinstance(entry, type) else _import_metric(entry)


def axis_of(name: str, default: str = FIDELITY) -> str:
    """The axis of a registered metric ("fidelity" or "text"); `default` for another name."""
    return metric_class(name).axis if name in METRICS else default


def canonical_metric_name(name: str) -> str:
    """ "clip-t" -> "clip_t"; a "package.module:Class" name (a metric of your own) is kept as it is."""
    if ":" in str(name):
        return str(name)
    key = str(name).strip().lower().replace("-", "_")
    METRICS.lookup(key)  # UserError naming the known metrics
    return key


def normalize_metric_spec(spec: Any, where: str = "metrics") -> dict[str, dict]:
    """`[dino, clip-t]` or `{dino: {model: ...}, clip_t: null}` -> {canonical name: options}."""
    if isinstance(spec, str):
        spec = [s for s in spec.split(",") if s.strip()]
    if isinstance(spec, (list, tuple)):
        spec = {s: {} for s in spec}
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"{where}: expected a list of metric names or a mapping name -> options")
    out: dict[str, dict] = {}
    for name, options in spec.items():
        key = canonical_metric_name(name)
        options = options or {}
        if isinstance(options, str):
            options = {"model": options}
        if not isinstance(options, dict):
            raise UserError(f"{where}.{name}: expected a mapping of options (model, batch_size)")
        unknown = set(options) - {"model", "batch_size"}
        if unknown:
            raise UserError(f"{where}.{name}.{min(unknown)}: unknown option (expected model, batch_size)")
        if key in METRICS and key not in DEFAULT_MODELS and "model" in options:  # the toy judges
            raise UserError(f"{where}.{name}.model: {key} takes no model (its judge ships with steerguide)")
        out[key] = dict(options)
    return out


def _import_metric(spec: str) -> type[Metric]:
    import importlib

    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"unknown metric {spec!r}: cannot import it ({e})") from None


def build_metrics(spec: Any, device: str = "cpu") -> list[Metric]:
    """Instantiate metrics from a spec (see `normalize_metric_spec`); models load on first use."""
    metrics = []
    for name, options in normalize_metric_spec(spec).items():
        cls = metric_class(name)
        if name in DEFAULT_MODELS:
            metrics.append(
                cls(
                    model=str(options.get("model", DEFAULT_MODELS[name])),
                    device=device,
                    batch_size=int(options.get("batch_size", 16)),
                )
            )
        else:
            metrics.append(cls(**options))
    return metrics
