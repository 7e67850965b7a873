"""DINO, CLIP-I and CLIP-T on tiny random models saved to disk, checked against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from steerguide.errors import UserError
from steerguide.evaluate.metrics import build_metrics, mean_cosine, normalize_metric_spec


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from steerguide.testing.metric_models import save_tiny_clip, save_tiny_vit

    root = tmp_path_factory.mktemp("metric-models")
    return save_tiny_vit(root / "vit"), save_tiny_clip(root / "clip")


def _images(n: int, seed: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_mean_cosine_arithmetic():
    gen = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    refs = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # row 0: cos = 1 and 0 -> 0.5; row 1: cos = 0.6 and 0.8 -> 0.7
    assert mean_cosine(gen, refs) == pytest.approx([0.5, 0.7])


def test_dino_is_mean_cosine_of_cls_embeddings(tiny_models):
    from transformers import ViTImageProcessor, ViTModel

    vit_dir, _ = tiny_models
    (dino,) = build_metrics({"dino": {"model": str(vit_dir), "batch_size": 2}})
    gen, refs = _images(3, seed=1), _images(2, seed=2)
    scores = dino.score(gen, ["unused"] * 3, dino.prepare(refs))

    model, proc = ViTModel.from_pretrained(vit_dir).eval(), ViTImageProcessor.from_pretrained(vit_dir)
    with torch.no_grad():

        def cls(im):
            return model(**proc(images=[im], return_tensors="pt")).last_hidden_state[0, 0].numpy()

        expected = [np.mean([_cos(cls(g), cls(r)) for r in refs]) for g in gen]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(np.round(scores, 6))) == 3  # a real function of the image, not a constant


def test_clip_i_and_clip_t_by_hand(tiny_models):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    _, clip_dir = tiny_models
    clip_i, clip_t = build_metrics({"clip-i": str(clip_dir), "clip_t": str(clip_dir)})
    gen, refs = _images(3, seed=3), _images(3, seed=4)
    prompts = ["a dog", "a red cat in the snow", "a teapot"]
    fidelity = clip_i.score(gen, prompts, clip_i.prepare(refs))
    text = clip_t.score(gen, prompts)

    model = CLIPModel.from_pretrained(clip_dir).eval()
    proc, tok = CLIPImageProcessor.from_pretrained(clip_dir), CLIPTokenizer.from_pretrained(clip_dir)
    with torch.no_grad():

        def image_emb(im):
            vision = model.vision_model(pixel_values=proc(images=[im], return_tensors="pt")["pixel_values"])
            return model.visual_projection(vision.pooler_output)[0].numpy()

        def text_emb(p):
            ids = tok([p], truncation=True, return_tensors="pt")
            return model.text_projection(model.text_model(**ids).pooler_output)[0].numpy()

        expected_i = [np.mean([_cos(image_emb(g), image_emb(r)) for r in refs]) for g in gen]
        expected_t = [_cos(image_emb(g), text_emb(p)) for g, p in zip(gen, prompts, strict=True)]
    assert fidelity == pytest.approx(expected_i, abs=1e-5)
    assert text == pytest.approx(expected_t, abs=1e-5)
    # CLIP-T pairs image i with prompt i: swapping the prompts changes the scores.
    assert clip_t.score(gen, prompts[::-1]) != pytest.approx(text, abs=1e-6)


def test_identical_image_scores_one(tiny_models):
    vit_dir, clip_dir = tiny_models
    dino, clip_i = build_metrics({"dino": str(vit_dir), "clip_i": str(clip_dir)})
    refs = _images(1, seed=5)
    assert dino.score(refs, [""], dino.prepare(refs)) == pytest.approx([1.0], abs=1e-5)
    assert clip_i.score(refs, [""], clip_i.prepare(refs)) == pytest.approx([1.0], abs=1e-5)


def test_unknown_metric_and_missing_model_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown metric 'fid'; expected one of dino, clip_i, clip_t"):
        normalize_metric_spec(["dino", "fid"])
    with pytest.raises(UserError, match=r"metrics.dino.modle: unknown option"):
        normalize_metric_spec({"dino": {"modle": "x"}})
    (dino,) = build_metrics({"dino": str(tmp_path / "nope")})
    with pytest.raises(UserError, match="cannot load the DINO model"):
        dino.prepare(_images(1, seed=0))
