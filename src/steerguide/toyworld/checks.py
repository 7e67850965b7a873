"""Measurements of the toy world's judges and base model, printed by `steerguide toyworld check-*`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from steerguide.toyworld.fidelity import FidelityJudge, roc_auc
from steerguide.toyworld.judges import ATTRIBUTES, TextJudge, read
from steerguide.toyworld.render import render_array
from steerguide.toyworld.subjects import SUBJECTS, Subject
from steerguide.toyworld.world import Spec, caption, complete, random_spec

Tick = Callable[[], None]
HELDOUT_SEED = 10**6  # render seeds of check scenes: far from the training dataset's scenes


def reading_accuracy(images: list[np.ndarray], specs: list[Spec],
                     tick: Tick | None = None) -> dict[str, float]:
    """Per attribute: how often `read` gives the rendered value (main object = largest)."""
    hits = {a: [] for a in ATTRIBUTES}
    for img, s in zip(images, specs, strict=True):
        r = read(img)
        m = r.main
        got = {"background": r.background, "position": m and m.position, "size": m and m.size,
               "shape": m and m.shape, "color": m and m.color,
               "second": (r.objects[1].color, r.objects[1].shape) if len(r.objects) > 1 else None}
        for a in ATTRIBUTES:
            hits[a].append(got[a] == getattr(s, a))
        if tick:
            tick()
    return {a: float(np.mean(v)) for a, v in hits.items()}


@torch.no_grad()
def vae_roundtrip(images: np.ndarray, vae) -> np.ndarray:
    """Encode and decode uint8 images (n, 32, 32, 3) with a diffusers VAE."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    out = []
    for i in range(0, len(x), 256):
        out.append(vae.decode(vae.encode(x[i:i + 256]).latent_dist.mode()).sample)
    y = torch.cat(out).clamp(-1, 1).add(1).mul(127.5).round().byte()
    return y.permute(0, 2, 3, 1).numpy()


def class_negatives(subject: Subject, n: int, seed: int) -> list[np.ndarray]:
    """Other members of the subject's class: grammar instances and the other subjects of that class."""
    rng = np.random.default_rng([seed, *subject.token.encode()])
    others = [s for s in SUBJECTS.values() if s.class_noun == subject.class_noun and s is not subject]
    out = [render_array(complete(Spec(shape=subject.class_noun), rng), HELDOUT_SEED + i) for i in range(n)]
    for o in others:
        out += [np.asarray(im) for im in o.heldout_images(n // 2, seed=seed + 1)]
    return out


def fidelity_auc(judge: FidelityJudge, n: int = 48, seed: int = 1, transform=None,
                 tick: Tick | None = None) -> dict[str, float]:
    """ROC-AUC per subject: held-out renders of the subject vs renders of other members of its class."""
    out = {}
    for s in SUBJECTS.values():
        pos = np.stack([np.asarray(im) for im in s.heldout_images(n, seed=seed)])
        neg = np.stack(class_negatives(s, n, seed))
        if transform is not None:
            pos, neg = transform(pos), transform(neg)
        refs = s.reference_images()
        out[s.name] = roc_auc(judge.fidelity(pos, refs), judge.fidelity(neg, refs))
        if tick:
            tick()
    return out


def check_judges(n: int = 500, vae=None, tick: Tick | None = None) -> dict:
    """Reading accuracy per attribute on fresh renders (and VAE round trips) and fidelity AUCs."""
    rng = np.random.default_rng(HELDOUT_SEED)
    specs = [random_spec(rng) for _ in range(n)]
    images = np.stack([render_array(s, HELDOUT_SEED + i) for i, s in enumerate(specs)])
    result = {"n": n, "text_renders": reading_accuracy(list(images), specs, tick)}
    judge = FidelityJudge()
    result["fidelity_auc_renders"] = fidelity_auc(judge, tick=tick)
    if vae is not None:
        rec = vae_roundtrip(images, vae)
        result["text_vae"] = reading_accuracy(list(rec), specs, tick)
        result["fidelity_auc_vae"] = fidelity_auc(judge, transform=lambda x: vae_roundtrip(x, vae), tick=tick)
    return result


def base_prompts(n: int, seed: int = 0) -> list[str]:
    """Full-grammar prompts for the base model check (every attribute stated)."""
    rng = np.random.default_rng([seed, 99])
    return [caption(random_spec(rng)) for _ in range(n)]


def sample(pipe, prompts: list[str], seed: int, guidance_scale: float = 5.0, steps: int = 20,
           batch: int = 64, tick: Tick | None = None) -> list[Image.Image]:
    """Sample 32x32 images with CFG, one per prompt, reproducibly from `seed`."""
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        g = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        out = pipe(chunk, height=32, width=32, num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=g, output_type="pil")
        images += out.images
        if tick:
            tick()
    return images


def check_base_ticks(n: int, fidelity: bool = True) -> int:
    """How many times `check_base` ticks: each batch of 64 prompts, and each class's samples."""
    return (n + 63) // 64 + (len({s.class_noun for s in SUBJECTS.values()}) if fidelity else 0)


def check_base(pipe, n: int = 128, seed: int = 0, guidance_scale: float = 5.0, tick: Tick | None = None,
               fidelity: bool = True):
    """Attribute accuracy of the base model's CFG samples, and their fidelity to every subject.

    Returns (result, prompts, images). Fidelity: samples of "a <class>" (no token) against each subject
    of that class, next to the fidelity of the subject's own held-out renders.
    """
    prompts = base_prompts(n, seed)
    images = sample(pipe, prompts, seed, guidance_scale, tick=tick)
    tj = TextJudge()
    per = {a: [] for a in ATTRIBUTES}
    for img, p in zip(images, prompts, strict=True):
        for a, ok in tj.breakdown(img, p).items():
            per[a].append(ok)
    result = {"n": n, "guidance_scale": guidance_scale,
              "accuracy": {a: float(np.mean(v)) for a, v in per.items() if v}, "counts":
              {a: len(v) for a, v in per.items()}}
    if not fidelity:
        return result, prompts, images
    fj = FidelityJudge()
    fid = {}
    class_samples: dict[str, list[Image.Image]] = {}
    for s in SUBJECTS.values():
        if s.class_noun not in class_samples:
            class_samples[s.class_noun] = sample(pipe, [f"a {s.class_noun}"] * 32, seed + 7, guidance_scale,
                                                 tick=tick)
        refs = s.reference_images()
        cls = fj.fidelity(class_samples[s.class_noun], refs)
        own = fj.fidelity(s.heldout_images(32, seed=seed + 1), refs)
        fid[s.name] = {"class_prompt_samples": float(np.mean(cls)),
                       "subject_heldout_renders": float(np.mean(own)),
                       "auc_subject_vs_class_samples": roc_auc(own, cls)}
    result["fidelity"] = fid
    return result, prompts, images
