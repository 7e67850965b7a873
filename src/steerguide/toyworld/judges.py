"""The text-alignment judge (our CLIP-T): reads a scene back from pixels, rule-based.

No training: it uses the renderer's palette and shape masks. The background is the palette color
that most border pixels are nearest to; objects are connected regions that differ from it; each
object's shape and radius are the renderer template (over a grid of radii) with the best soft IoU,
its color the palette color (or its pattern shade) most of its pixels are nearest to, and its position
the anchor nearest to the fitted template's center. A prompt's score is the fraction of the
attributes it states (background, position, size, shape, color, second object) that the image
satisfies; pattern and subject tokens are not judged here (fidelity judges the subject).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image

from steerguide.toyworld.render import RADIUS, SUPERSAMPLE, _lookup, shade, shape_mask
from steerguide.toyworld.world import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SECOND_CORNERS,
    SHAPES,
    Spec,
    parse_caption,
)

FOREGROUND_DISTANCE = 40.0  # RGB distance from the background that makes a pixel part of an object
MIN_AREA = 5  # pixels: smaller regions are noise
_RADII = np.arange(3.0, 9.01, 0.5)
_LARGE_FROM = (RADIUS["large"] + RADIUS["small"]) / 2
ATTRIBUTES = ("background", "position", "size", "shape", "color", "second")


@dataclass
class ObjectReading:
    shape: str
    color: str
    size: str
    position: str
    radius: float
    center: tuple[float, float]
    area: int
    iou: float


@dataclass
class Reading:
    """What the judge sees: a background and objects, largest first."""

    background: str
    objects: list[ObjectReading] = field(default_factory=list)

    @property
    def main(self) -> ObjectReading | None:
        return self.objects[0] if self.objects else None


@cache
def _centroid(shape: str) -> tuple[float, float]:
    """Centroid of a shape in its own [-1, 1] coordinates (u, v)."""
    m = shape_mask(shape)
    vs, us = np.nonzero(m)
    n = m.shape[0] - 1
    return float(us.mean() / n * 2 - 1), float(vs.mean() / n * 2 - 1)


def _coverage(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage (32, 32) of `shape` centered at (cx, cy) with radius r, as rendered."""
    s = SUPERSAMPLE
    out = np.zeros((32, 32), dtype=np.float32)
    y0, y1 = max(0, int(cy - r) - 1), min(32, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r) - 1), min(32, int(cx + r) + 2)
    if y1 <= y0 or x1 <= x0:
        return out
    ys = y0 + (np.arange((y1 - y0) * s, dtype=np.float32) + 0.5) / s
    xs = x0 + (np.arange((x1 - x0) * s, dtype=np.float32) + 0.5) / s
    py, px = np.meshgrid(ys, xs, indexing="ij")
    mask = _lookup(shape, (px - cx) / r, (py - cy) / r).astype(np.float32)
    out[y0:y1, x0:x1] = mask.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))
    return out


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected regions of a boolean mask, as lists of (row, col)."""
    seen = np.zeros_like(mask)
    out = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, pts = deque([start]), []
        while queue:
            y, x = queue.popleft()
            pts.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < 32 and 0 <= nx < 32 and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        out.append(np.array(pts))
    return out


def _fill_holes(region: np.ndarray) -> np.ndarray:
    """`region` with enclosed non-region pixels (pattern marks of the object's own color) filled."""
    outside = _components(~region)
    filled = region.copy()
    for pts in outside:
        if not ((pts == 0) | (pts == 31)).any():
            filled[pts[:, 0], pts[:, 1]] = True
    return filled


_PALETTE = np.array([COLORS[c] for c in COLORS] + [shade(COLORS[c]) for c in COLORS], dtype=np.float32)
_BG = np.array(list(BACKGROUNDS.values()), dtype=np.float32)


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return np.argmin(((pixels[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)


def _read_object(img: np.ndarray, region: np.ndarray) -> ObjectReading:
    filled = _fill_holes(region).astype(np.float32)
    ys, xs = np.nonzero(filled)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    best = (-1.0, "", 0.0, (0.0, 0.0))
    for shape in SHAPES:
        du, dv = _centroid(shape)
        for r in _RADII:
            ox, oy = cx - du * r, cy - dv * r
            cov = _coverage(shape, ox, oy, r)
            iou = np.minimum(cov, filled).sum() / np.maximum(cov, filled).sum()
            if iou > best[0]:
                best = (float(iou), shape, float(r), (float(ox), float(oy)))
    iou, shape, r, center = best
    # Vote with interior pixels: edge pixels are mixed with the background.
    inner = region.copy()
    inner[1:] &= region[:-1]
    inner[:-1] &= region[1:]
    inner[:, 1:] &= region[:, :-1]
    inner[:, :-1] &= region[:, 1:]
    core = img[inner] if inner.sum() >= 3 else img[region]
    votes = np.bincount(_nearest(core, _PALETTE) % len(COLORS), minlength=len(COLORS))
    anchors = np.array(list(POSITIONS.values()))
    position = list(POSITIONS)[int(np.argmin(((anchors - np.array(center)) ** 2).sum(1)))]
    return ObjectReading(shape=shape, color=list(COLORS)[int(np.argmax(votes))],
                         size="large" if r >= _LARGE_FROM else "small", position=position, radius=r,
                         center=center, area=int(region.sum()), iou=iou)


def read(image: Image.Image | np.ndarray) -> Reading:
    """Read background and objects from a 32x32 RGB image."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if img.shape != (32, 32, 3):
        img = np.asarray(Image.fromarray(img.astype(np.uint8)).resize((32, 32), Image.BILINEAR), np.float32)
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    votes = np.bincount(_nearest(border, _BG), minlength=len(_BG))
    k = int(np.argmax(votes))
    bg_pixels = border[_nearest(border, _BG) == k]
    bg_color = np.median(bg_pixels, axis=0)
    bg_dist = np.sqrt(((img - bg_color) ** 2).sum(-1))
    fg = bg_dist > FOREGROUND_DISTANCE
    regions = [pts for pts in _components(fg) if len(pts) >= MIN_AREA]
    objects = []
    for pts in sorted(regions, key=len, reverse=True)[:4]:
        region = np.zeros((32, 32), dtype=bool)
        region[pts[:, 0], pts[:, 1]] = True
        objects.append(_read_object(img, region))
    # The main object is the largest by fitted radius (a small main object and a second object can
    # cover similar areas), then the one farther from the far corners where second objects sit.
    far = np.array(list(SECOND_CORNERS.values()))
    objects.sort(key=lambda o: (o.radius, np.sqrt(((far - o.center) ** 2).sum(1)).min()), reverse=True)
    return Reading(background=list(BACKGROUNDS)[k], objects=objects)


class TextJudge:
    """Text alignment: the fraction of a prompt's stated attributes that an image satisfies."""

    def breakdown(self, image: Image.Image | np.ndarray, prompt: str | Spec) -> dict[str, bool]:
        """Each stated attribute (of `ATTRIBUTES`) and whether the image satisfies it.

        The main object is the one that satisfies most of the main-object attributes (ties: the larger);
        the second object must be a different object with the stated color and shape.
        """
        spec = parse_caption(prompt) if isinstance(prompt, str) else prompt
        reading = read(image)
        out: dict[str, bool] = {}
        if spec.background is not None:
            out["background"] = reading.background == spec.background
        wanted = {k: getattr(spec, k) for k in ("position", "size", "shape", "color") if getattr(spec, k)}

        def hits(o: ObjectReading) -> dict[str, bool]:
            return {k: getattr(o, k) == v for k, v in wanted.items()}

        main = max(reading.objects, key=lambda o: sum(hits(o).values()), default=None)
        out.update(hits(main) if main is not None else {k: False for k in wanted})
        if spec.second is not None:
            out["second"] = any((o.color, o.shape) == spec.second for o in reading.objects if o is not main)
        return out

    def score(self, image: Image.Image | np.ndarray, prompt: str | Spec) -> float:
        """Mean of `breakdown` (1.0 for a prompt that states nothing judged)."""
        b = self.breakdown(image, prompt)
        return float(np.mean(list(b.values()))) if b else 1.0
