"""The toy world's scene specs and their caption grammar.

A scene is one main object (shape, color, pattern, size, position) on a background, optionally with a
small second object in a far corner. A `Spec` with some fields `None` is what a prompt states; `render`
needs every field set (`complete` fills the rest at random). Captions follow one fixed word order:

    a [size] [color] [pattern] [TOKEN] SHAPE [on a BG background] [in the POSITION] [next to a COLOR SHAPE]
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from steerguide.errors import UserError

SHAPES = ("circle", "square", "triangle", "star", "heart")
COLORS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (135, 55, 190),
    "orange": (245, 135, 25),
}
PATTERNS = ("plain", "striped", "dotted")
BACKGROUNDS = {
    "white": (238, 238, 238),
    "black": (22, 22, 22),
    "gray": (125, 125, 125),
    "pink": (250, 185, 205),
    "sand": (215, 195, 150),
    "teal": (25, 120, 125),
}
SIZES = ("small", "large")
# Object centers in pixels of the 32x32 image: corners far from the center so layouts differ in latents.
POSITIONS = {
    "top left": (8.0, 8.0),
    "top right": (24.0, 8.0),
    "bottom left": (8.0, 24.0),
    "bottom right": (24.0, 24.0),
    "center": (16.0, 16.0),
}
# The second object sits in a far corner, diagonally opposite a corner object.
SECOND_CORNERS = {
    "top left": (6.0, 6.0),
    "top right": (26.0, 6.0),
    "bottom left": (6.0, 26.0),
    "bottom right": (26.0, 26.0),
}
OPPOSITE = {"top left": "bottom right", "bottom right": "top left", "top right": "bottom left",
            "bottom left": "top right"}
IMAGE_SIZE = 32
# Subject tokens: rare words that exist in the tokenizer but never appear in the base model's captions.
RARE_TOKENS = ("sks", "zwx", "qlv", "vyt", "bnq", "kfp", "jxh", "dmr", "pzt", "wgc", "hto", "yfe")


@dataclass(frozen=True)
class Spec:
    """A scene, or the part of one that a prompt states (`None`: not stated / free)."""

    shape: str | None = None
    color: str | None = None
    pattern: str | None = None
    size: str | None = None
    position: str | None = None
    background: str | None = None
    second: tuple[str, str] | None = None  # (color, shape) of the second object
    token: str | None = None  # a subject's rare token: the main object is that subject
    has_second: bool | None = None  # False: no second object (for full specs); None: unstated

    def replace(self, **changes) -> Spec:
        return dataclasses.replace(self, **changes)


def validate(spec: Spec) -> None:
    """Raise `UserError` for a value outside the world."""
    checks = [
        ("shape", spec.shape, SHAPES), ("color", spec.color, COLORS), ("pattern", spec.pattern, PATTERNS),
        ("size", spec.size, SIZES), ("position", spec.position, POSITIONS),
        ("background", spec.background, BACKGROUNDS), ("token", spec.token, RARE_TOKENS),
    ]
    for name, value, allowed in checks:
        if value is not None and value not in allowed:
            raise UserError(f"bad spec: {name} {value!r} is not one of {', '.join(allowed)}")
    if spec.second is not None:
        color, shape = spec.second
        if color not in COLORS or shape not in SHAPES:
            raise UserError(f"bad spec: second object {spec.second!r} needs a color and a shape of the world")
        if spec.position == "center" and spec.size == "large":
            raise UserError("bad spec: a large object in the center leaves no room for a second object")
    if spec.color is not None and spec.second is not None and spec.second[0] == spec.color:
        raise UserError("bad spec: the second object must differ in color from the main object")


def is_complete(spec: Spec) -> bool:
    fields = (spec.shape, spec.pattern, spec.size, spec.position, spec.background)
    return all(f is not None for f in fields) and (spec.color is not None or spec.token is not None)


def complete(spec: Spec, rng: np.random.Generator, p_second: float = 0.3) -> Spec:
    """Fill every unstated field of `spec` at random (a second object with probability `p_second`)."""
    validate(spec)
    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    shape = spec.shape or pick(SHAPES)
    color = spec.color if spec.color is not None or spec.token is not None else pick(list(COLORS))
    position = spec.position or pick(list(POSITIONS))
    want_second = spec.second is not None or (spec.has_second is None and rng.random() < p_second)
    size = spec.size
    if size is None:
        size = "small" if (want_second and position == "center") else pick(SIZES)
    if want_second and position == "center" and size == "large":
        want_second = False
    second = spec.second
    if want_second and second is None:
        second = (pick([c for c in COLORS if c != color]), pick(SHAPES))
    return Spec(
        shape=shape, color=color, pattern=spec.pattern or pick(PATTERNS), size=size, position=position,
        background=spec.background or pick(list(BACKGROUNDS)), second=second, token=spec.token,
        has_second=second is not None,
    )


def random_spec(rng: np.random.Generator, p_second: float = 0.3) -> Spec:
    """A random complete scene of the grammar (no subject)."""
    return complete(Spec(), rng, p_second)


def caption(spec: Spec, drop: frozenset[str] = frozenset(), class_noun: str | None = None) -> str:
    """The caption of `spec`, leaving out unstated fields and those named in `drop`.

    `drop` may name: size, color, pattern, background, position, second. A subject's class noun can be
    given for a token spec whose `shape` is unset.
    """
    def keep(name: str, value) -> bool:
        return value is not None and name not in drop

    words = ["a"]
    if keep("size", spec.size):
        words.append(spec.size)
    if keep("color", spec.color):
        words.append(spec.color)
    if keep("pattern", spec.pattern):
        words.append(spec.pattern)
    if spec.token is not None:
        words.append(spec.token)
    noun = spec.shape or class_noun
    if noun is None:
        raise UserError("bad spec: a caption needs a shape")
    words.append(noun)
    if keep("background", spec.background):
        words += ["on", "a", spec.background, "background"]
    if keep("position", spec.position):
        words += ["in", "the", spec.position]
    if keep("second", spec.second):
        words += ["next", "to", "a", spec.second[0], spec.second[1]]
    return " ".join(words)


def random_caption(spec: Spec, rng: np.random.Generator) -> str:
    """A caption of a complete scene that states each optional attribute with probability 0.75.

    Partial captions keep the base model in distribution for short prompts such as "a sks star".
    """
    optional = ("size", "color", "pattern", "background", "position", "second")
    drop = frozenset(name for name in optional if rng.random() < 0.25)
    return caption(spec, drop)


_POSITION_RE = "|".join(sorted(POSITIONS, key=len, reverse=True))
_CAPTION_RE = re.compile(
    rf"^an? (?:(?P<size>{'|'.join(SIZES)}) )?(?:(?P<color>{'|'.join(COLORS)}) )?"
    rf"(?:(?P<pattern>{'|'.join(PATTERNS)}) )?(?:(?P<token>{'|'.join(RARE_TOKENS)}) )?"
    rf"(?P<shape>{'|'.join(SHAPES)})"
    rf"(?: on a (?P<background>{'|'.join(BACKGROUNDS)}) background)?(?: in the (?P<position>{_POSITION_RE}))?"
    rf"(?: next to an? (?P<second_color>{'|'.join(COLORS)}) (?P<second_shape>{'|'.join(SHAPES)}))?$"
)


def parse_caption(text: str) -> Spec:
    """The attributes that a caption of the grammar states (subject tokens included)."""
    m = _CAPTION_RE.match(" ".join(text.lower().replace(",", " ").split()))
    if m is None:
        raise UserError(f"not a caption of the toy world's grammar: {text!r}")
    g = m.groupdict()
    second = (g["second_color"], g["second_shape"]) if g["second_color"] else None
    spec = Spec(shape=g["shape"], color=g["color"], pattern=g["pattern"], size=g["size"],
                position=g["position"], background=g["background"], second=second, token=g["token"])
    validate(spec)
    return spec


def vocabulary() -> list[str]:
    """Every word of the grammar and every rare token, in a fixed order (the tokenizer's words)."""
    words = ["a", "an", "on", "background", "in", "the", "next", "to"]
    words += list(SIZES) + list(COLORS) + list(PATTERNS) + list(SHAPES) + list(BACKGROUNDS)
    for pos in POSITIONS:
        words += [w for w in pos.split() if w not in words]
    return words + list(RARE_TOKENS)
