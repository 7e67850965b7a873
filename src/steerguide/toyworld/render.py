"""Pixels of the toy world: flat shapes painted with a color and pattern (or a subject's look).

Rendering is supersampled 4x and box-filtered down, so edges are anti-aliased and sub-pixel jitter
shows. Deterministic: the same spec and seed give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from steerguide.errors import UserError
from steerguide.toyworld.world import (
    BACKGROUNDS,
    COLORS,
    IMAGE_SIZE,
    OPPOSITE,
    POSITIONS,
    SECOND_CORNERS,
    SHAPES,
    Spec,
    is_complete,
    validate,
)

SUPERSAMPLE = 4
RADIUS = {"large": 7.5, "small": 5.0}
SECOND_RADIUS = 4.0
JITTER = 1.0  # pixels of random offset of the main object
_GRID = 257  # resolution of the precomputed shape masks over [-1, 1]^2
GRAMMAR_LOOKS = ("plain", "striped", "dotted")
SUBJECT_LOOKS = ("split_v", "split_h", "split_d", "ring", "dot", "cross", "checker", "vstripes", "inset")
LOOK_KINDS = GRAMMAR_LOOKS + SUBJECT_LOOKS


@dataclass(frozen=True)
class Look:
    """How an object is painted: `kind` over two colors (RGB 0-255).

    Grammar kinds: plain, striped (diagonal), dotted. Subject kinds (never produced by the grammar):
    split_v, split_h, split_d (two-tone halves), ring, dot, cross, checker, vstripes, inset (a smaller
    copy of the shape in the second color).
    """

    kind: str
    a: tuple[int, int, int]
    b: tuple[int, int, int] | None = None


def shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The darker tone that grammar patterns use next to their color."""
    return tuple(round(c * 0.45) for c in rgb)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles) + 0.08], axis=1)


@cache
def shape_mask(shape: str) -> np.ndarray:
    """Boolean mask of `shape` on a `_GRID`x`_GRID` grid over [-1, 1]^2 (row = v, downward)."""
    t = np.linspace(-1.0, 1.0, _GRID)
    v, u = np.meshgrid(t, t, indexing="ij")
    if shape == "circle":
        return u**2 + v**2 <= 0.93**2
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "heart":
        x, y = u * 1.22, -v * 1.22 + 0.12
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    polygons = {"triangle": np.array([[0.0, -0.95], [-0.97, 0.82], [0.97, 0.82]]), "star": _star()}
    if shape not in polygons:
        raise UserError(f"bad spec: unknown shape {shape!r}")
    from matplotlib.path import Path as Polygon  # here: matplotlib costs the CLI's start 0.3 s

    inside = Polygon(polygons[shape]).contains_points(np.stack([u.ravel(), v.ravel()], axis=1))
    return inside.reshape(_GRID, _GRID)


def _paint(look: Look, u: np.ndarray, v: np.ndarray, px: np.ndarray, py: np.ndarray,
           shape: str) -> np.ndarray:
    """RGB (H, W, 3) of `look` at object coordinates (u, v) in [-1, 1] and pixel offsets (px, py)."""
    a = np.array(look.a, dtype=np.float32)
    b = np.array(look.b if look.b is not None else shade(look.a), dtype=np.float32)
    k = look.kind
    if k == "plain":
        second = np.zeros_like(u, dtype=bool)
    elif k == "striped":
        second = np.floor((px + py) / 2.0) % 2 == 1
    elif k == "dotted":
        second = ((px % 4) - 2) ** 2 + ((py % 4) - 2) ** 2 <= 1.1
    elif k == "split_v":
        second = u > 0
    elif k == "split_h":
        second = v > 0.05
    elif k == "split_d":
        second = u + v > 0
    elif k == "ring":
        rho = np.sqrt(u**2 + v**2)
        second = (rho > 0.3) & (rho < 0.6)
    elif k == "dot":
        second = u**2 + (v - 0.05) ** 2 < 0.38**2
    elif k == "cross":
        second = (np.abs(u) < 0.2) | (np.abs(v) < 0.2)
    elif k == "checker":
        second = (np.floor(px / 3.0) + np.floor(py / 3.0)) % 2 == 1
    elif k == "vstripes":
        second = np.floor(px / 2.0) % 2 == 1
    elif k == "inset":
        second = _lookup(shape, u / 0.55, v / 0.55)
    else:
        raise UserError(f"bad spec: unknown look {k!r}")
    return np.where(second[..., None], b, a)


def _lookup(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    mask = shape_mask(shape)
    inside = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    i = np.clip(np.round((v + 1) / 2 * (_GRID - 1)).astype(int), 0, _GRID - 1)
    j = np.clip(np.round((u + 1) / 2 * (_GRID - 1)).astype(int), 0, _GRID - 1)
    return inside & mask[i, j]


def _draw(canvas: np.ndarray, shape: str, look: Look, cx: float, cy: float, r: float) -> None:
    """Draw one object, centered at (cx, cy) output pixels with radius r, onto the supersampled canvas."""
    s = SUPERSAMPLE
    n = canvas.shape[0]
    coords = (np.arange(n, dtype=np.float32) + 0.5) / s  # pixel-space coordinates of supersamples
    py, px = np.meshgrid(coords, coords, indexing="ij")
    u, v = (px - cx) / r, (py - cy) / r
    mask = _lookup(shape, u, v)
    colors = _paint(look, u, v, px - cx, py - cy, shape)
    canvas[mask] = colors[mask]


def render_array(spec: Spec, seed: int = 0, look: Look | None = None) -> np.ndarray:
    """Render a complete spec to a (32, 32, 3) uint8 array; `look` overrides the main object's paint."""
    validate(spec)
    if not is_complete(spec):
        raise UserError(f"bad spec: every attribute must be set to render, got {spec}")
    if look is None:
        if spec.color is None:
            raise UserError("bad spec: a subject token needs its subject's look to render")
        look = Look(spec.pattern, COLORS[spec.color])
    rng = np.random.default_rng(seed)
    n = IMAGE_SIZE * SUPERSAMPLE
    canvas = np.empty((n, n, 3), dtype=np.float32)
    canvas[:] = BACKGROUNDS[spec.background]
    cx, cy = POSITIONS[spec.position]
    jx, jy = rng.uniform(-JITTER, JITTER, size=2)
    if spec.second is not None:
        corner = OPPOSITE.get(spec.position) or list(SECOND_CORNERS)[int(rng.integers(4))]
        sx, sy = SECOND_CORNERS[corner]
        _draw(canvas, spec.second[1], Look("plain", COLORS[spec.second[0]]), sx, sy, SECOND_RADIUS)
    _draw(canvas, spec.shape, look, cx + jx, cy + jy, RADIUS[spec.size])
    small = canvas.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def render(spec: Spec, seed: int = 0, look: Look | None = None) -> Image.Image:
    """Render a complete spec to a 32x32 RGB image (subjects: see `Subject.render`)."""
    return Image.fromarray(render_array(spec, seed, look))


__all__ = ["LOOK_KINDS", "SHAPES", "Look", "render", "render_array", "shade", "shape_mask"]
