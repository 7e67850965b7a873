"""The subject-fidelity judge (our DINO): an embedding trained to tell object instances apart.

A small CNN is trained contrastively (InfoNCE) on random *instances* (a shape painted with a random
look in random colors, grammar looks included) rendered in two random contexts each (background,
position, size, second object, blur and noise), so that it ignores context and keeps identity. The
personal subjects are never in its training data (their exact colors are not drawn). Fidelity of an
image is its mean cosine similarity to a subject's reference images, as DINO scores are on DreamBench.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from steerguide.errors import UserError
from steerguide.toyworld.render import Look, render_array
from steerguide.toyworld.world import COLORS, PATTERNS, SHAPES, Spec, complete

SUBJECT_KINDS = ("split_v", "split_h", "split_d", "ring", "dot", "cross", "checker", "vstripes", "inset")


class Embedder(nn.Module):
    """32x32 RGB -> unit vector of `dim`: four 3x3 conv stages, average and max pooling, a projection."""

    def __init__(self, dim: int = 64, width: int = 24):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 3 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(3 * w, 3 * w, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(6 * w, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return F.normalize(self.head(h), dim=1)


def random_instance(rng: np.random.Generator) -> tuple[str, Look]:
    """A random object instance: a shape with a grammar look (30%) or a two-color look in random colors."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    if rng.random() < 0.3:
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        return shape, Look(PATTERNS[int(rng.integers(len(PATTERNS)))], COLORS[color])
    while True:
        a, b = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2))
        if np.linalg.norm(np.subtract(a, b)) > 80:
            return shape, Look(SUBJECT_KINDS[int(rng.integers(len(SUBJECT_KINDS)))], a, b)


def render_view(shape: str, look: Look, rng: np.random.Generator) -> np.ndarray:
    """The instance in a random context of the world."""
    spec = complete(Spec(shape=shape, token="sks", pattern="plain"), rng, p_second=0.3)
    return render_array(spec, int(rng.integers(2**31)), look)


def to_batch(images: Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
    """Images (PIL list or uint8 array (n, 32, 32, 3)) -> float tensor (n, 3, 32, 32) in [-1, 1]."""
    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR)) for im in images])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur and noise of random strength, so that decoded (VAE) and generated images stay in reach."""
    n = x.shape[0]
    sigma = torch.rand(n, generator=g) * 0.9
    k = torch.arange(-2, 3, dtype=torch.float32)
    kern = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kern = kern / kern.sum(1, keepdim=True)  # (n, 5)
    xb = x.reshape(1, n * 3, 32, 32)
    kx = kern.repeat_interleave(3, 0)[:, None, None, :]
    xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), kx, groups=n * 3)
    xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), kx.transpose(2, 3), groups=n * 3)
    x = xb.reshape(n, 3, 32, 32)
    return x + torch.randn(x.shape, generator=g) * (torch.rand(n, 1, 1, 1, generator=g) * 0.06)


def train_embedder(n_instances: int = 3000, views: int = 6, steps: int = 1000, batch: int = 64,
                   seed: int = 0, progress: Callable[[str, int, int, dict], None] | None = None) -> Embedder:
    """Train the embedding with InfoNCE between two context views of each instance."""
    rng = np.random.default_rng([seed, 7])
    data = np.empty((n_instances, views, 32, 32, 3), dtype=np.uint8)
    for i in range(n_instances):
        shape, look = random_instance(rng)
        for j in range(views):
            data[i, j] = render_view(shape, look, rng)
        if progress and i % 200 == 0:
            progress("render", i, n_instances, {})
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Embedder()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    for step in range(steps):
        idx = torch.randperm(n_instances, generator=g)[:batch].numpy()
        pick = np.stack([rng.choice(views, 2, replace=False) for _ in idx])
        a = _augment(to_batch(data[idx, pick[:, 0]]), g)
        b = _augment(to_batch(data[idx, pick[:, 1]]), g)
        za, zb = model(a), model(b)
        logits = za @ zb.T / 0.1
        target = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and step % 50 == 0:
            progress("fidelity", step, steps, {"loss": loss.item()})
    return model.eval()


def default_weights() -> Path:
    return Path(__file__).parent / "assets" / "judges" / "fidelity.safetensors"


class FidelityJudge:
    """Subject fidelity: cosine similarity of instance embeddings (the toy world's DINO)."""

    def __init__(self, weights: str | Path | None = None):
        path = Path(weights) if weights is not None else default_weights()
        if not path.exists():
            raise UserError(f"fidelity judge weights not found: {path}")
        self.model = Embedder()
        self.model.load_state_dict(load_file(str(path)))
        self.model.eval()

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
        """Unit embeddings (n, dim) of 32x32 RGB images."""
        if len(images) == 0:
            return torch.zeros(0, self.model.head.out_features)
        return torch.cat([self.model(to_batch(images[i:i + 256])) for i in range(0, len(images), 256)])

    def fidelity(self, images: Sequence[Image.Image] | np.ndarray,
                 references: Sequence[Image.Image] | np.ndarray) -> list[float]:
        """Mean cosine similarity of each image's embedding to the references' embeddings."""
        if len(references) == 0:
            raise UserError("fidelity needs at least one reference image")
        sims = self.embed(images) @ self.embed(references).T
        return sims.mean(dim=1).tolist()


def save_embedder(model: Embedder, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = np.asarray(positives, float), np.asarray(negatives, float)
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    greater = (pos[:, None] > neg[None]).sum()
    ties = (pos[:, None] == neg[None]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
