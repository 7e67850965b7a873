"""Personal subjects: instances of a class noun with a look the grammar never produces.

Each subject is bound to a rare token ("sks star") and painted with a two-color look (split halves, a
ring, an inset, a cross, a checker, ...), usually in colors outside the grammar's palette. Its five
reference photos span a few contexts (2-3 backgrounds, two positions, both sizes), as a person's few
photos do; the evaluation prompts and the held-out renders (fidelity references) ask only for
backgrounds and positions the photos never show.

Subjects are defined in YAML (the built-in ones in `assets/subjects.yaml`); `load_subjects(path)` reads
such a file, `get_subject(name, path)` finds one subject in it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from steerguide.errors import UserError
from steerguide.toyworld.render import LOOK_KINDS, Look, render_array
from steerguide.toyworld.world import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    RARE_TOKENS,
    SHAPES,
    SIZES,
    Spec,
    caption,
    complete,
)
from steerguide.yaml_files import safe_load

# Colors outside the grammar's palette and backgrounds, usable by name in a subjects file.
SUBJECT_COLORS = {
    "cyan": (0, 215, 225),
    "magenta": (225, 30, 160),
    "lime": (165, 235, 30),
    "navy": (25, 35, 115),
    "maroon": (115, 20, 45),
    "mint": (160, 240, 205),
}
NAMED_COLORS = {**COLORS, **SUBJECT_COLORS}
N_PHOTOS = 5  # photos drawn by the world's rule when a subject does not list its own
N_PROMPTS = 16  # evaluation prompts per subject (fewer when the photos leave few new contexts)
_SUBJECT_KEYS = ("token", "class", "look", "colors", "photos")
_PHOTO_KEYS = ("background", "position", "size")


def builtin_subjects_path() -> Path:
    return Path(__file__).parent / "assets" / "subjects.yaml"


@dataclass(frozen=True)
class PhotoContext:
    """Where one reference photo shows the subject."""

    background: str
    position: str
    size: str


def default_photos(token: str, n: int = N_PHOTOS) -> tuple[PhotoContext, ...]:
    """The world's rule for a subject's photos, drawn from its token: 2-3 backgrounds, two positions and
    both sizes over `n` distinct contexts (as a person's few photos span a few places)."""
    rng = np.random.default_rng([11, *token.encode()])
    n_bg = 2 + int(rng.integers(2))
    backgrounds = [str(b) for b in rng.choice(list(BACKGROUNDS), n_bg, replace=False)]
    positions = [str(p) for p in rng.choice(list(POSITIONS), 2, replace=False)]
    while True:  # redraw until every chosen background, position and size appears, all contexts distinct
        photos = tuple(
            PhotoContext(backgrounds[i % n_bg], positions[int(rng.integers(2))], SIZES[int(rng.integers(2))])
            for i in range(n)
        )
        if (len(set(photos)) == n and {p.position for p in photos} == set(positions)
                and {p.size for p in photos} == set(SIZES)):
            return photos


@dataclass(frozen=True)
class Subject:
    """A personal subject: `token` + `class_noun`, a `look`, and the contexts of its reference photos."""

    token: str
    class_noun: str
    look: Look
    photos: tuple[PhotoContext, ...]

    @property
    def name(self) -> str:
        return f"{self.token}_{self.class_noun}"

    @property
    def instance_prompt(self) -> str:
        """The prompt that fine-tuning binds to the reference photos, e.g. "a sks star"."""
        return f"a {self.token} {self.class_noun}"

    @property
    def n_references(self) -> int:
        return len(self.photos)

    @property
    def photo_backgrounds(self) -> set[str]:
        return {p.background for p in self.photos}

    @property
    def photo_positions(self) -> set[str]:
        return {p.position for p in self.photos}

    def render(self, spec: Spec, seed: int = 0) -> Image.Image:
        """Render this subject in the context of `spec` (its shape and token are set here).

        A color in `spec` repaints the look's first color ("a blue sks star").
        """
        look = self.look if spec.color is None else Look(self.look.kind, COLORS[spec.color], self.look.b)
        full = spec.replace(shape=self.class_noun, token=self.token, pattern=spec.pattern or "plain")
        return Image.fromarray(render_array(full, seed, look))

    def reference_specs(self) -> list[Spec]:
        return [Spec(size=p.size, position=p.position, background=p.background, pattern="plain",
                     has_second=False, shape=self.class_noun, token=self.token) for p in self.photos]

    def reference_images(self) -> list[Image.Image]:
        """The few photos that personalization trains on (their contexts, plus a pixel of jitter)."""
        return [self.render(s, seed=1000 + i) for i, s in enumerate(self.reference_specs())]

    def heldout_specs(self, n: int = 16, seed: int = 0) -> list[Spec]:
        """Random contexts whose background and position the photos never show (second object 30%)."""
        rng = np.random.default_rng([seed, *self.token.encode()])
        specs = []
        while len(specs) < n:
            s = complete(Spec(shape=self.class_noun, token=self.token, pattern="plain"), rng, p_second=0.3)
            if s.background not in self.photo_backgrounds and s.position not in self.photo_positions:
                specs.append(s)
        return specs

    def heldout_images(self, n: int = 16, seed: int = 0) -> list[Image.Image]:
        """Renders of the subject in new contexts: references for fidelity only, never for training."""
        return [self.render(s, seed=2000 + i) for i, s in enumerate(self.heldout_specs(n, seed))]

    def eval_specs(self) -> list[Spec]:
        """What the evaluation prompts ask for, only contexts the photos lack: each new background, each
        new position, two second objects, two recolorings, then new background + position pairs (every
        other one with a size) up to `N_PROMPTS`."""
        rng = np.random.default_rng(list(self.token.encode()))
        base = Spec(shape=self.class_noun, token=self.token)
        new_bgs = [b for b in BACKGROUNDS if b not in self.photo_backgrounds]
        new_pos = [p for p in POSITIONS if p not in self.photo_positions]
        specs = [base.replace(background=b) for b in new_bgs]
        specs += [base.replace(position=p) for p in new_pos]
        seconds = rng.choice([s for s in SHAPES if s != self.class_noun], size=2, replace=False)
        colors = rng.choice(list(COLORS), size=4, replace=False)
        specs += [base.replace(second=(str(c), str(s))) for c, s in zip(colors[:2], seconds, strict=True)]
        specs += [base.replace(color=str(c)) for c in colors[2:]]
        pairs = [(b, p) for b in new_bgs for p in new_pos]
        for k in rng.permutation(len(pairs)):
            if len(specs) >= N_PROMPTS:
                break
            b, p = pairs[int(k)]
            size = None if len(specs) % 2 else SIZES[int(rng.integers(2))]
            specs.append(base.replace(background=b, position=p, size=size))
        return specs[:N_PROMPTS]

    def eval_prompts(self) -> list[str]:
        """The evaluation prompts, with token and class noun in place ("a sks star on a pink background")."""
        return [caption(s) for s in self.eval_specs()]

    def export(self, folder: str | Path) -> Path:
        """Write the reference photos as `<folder>/<name>/NN.png` (DreamBench layout); returns that folder."""
        out = Path(folder) / self.name
        out.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(self.reference_images()):
            img.save(out / f"{i:02d}.png")
        return out

    def to_dict(self) -> dict[str, Any]:
        """This subject as one entry of a subjects file (photos always listed)."""
        return {
            "token": self.token,
            "class": self.class_noun,
            "look": self.look.kind,
            "colors": [_color_name(self.look.a), _color_name(self.look.b)],
            "photos": [{"background": p.background, "position": p.position, "size": p.size}
                       for p in self.photos],
        }


def _color_name(rgb: tuple[int, int, int] | None) -> str | list[int]:
    for name, value in NAMED_COLORS.items():
        if tuple(value) == tuple(rgb):
            return name
    return [int(c) for c in rgb]


def _one_of(value: Any, allowed, what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{value!r} is not {what} ({', '.join(allowed)})")
    return value


def _color(value: Any) -> tuple[int, int, int]:
    if isinstance(value, str):
        if value not in NAMED_COLORS:
            raise ValueError(f"{value!r} is not a color name ({', '.join(NAMED_COLORS)}) or [r, g, b]")
        return NAMED_COLORS[value]
    if (isinstance(value, list) and len(value) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        return (value[0], value[1], value[2])
    raise ValueError(f"{value!r} is not a color name or [r, g, b] with integers 0-255")


def subject_from_dict(entry: Any, label: str = "subject") -> Subject:
    """One subjects-file entry → `Subject`; a bad entry is a `ValueError` of the form "key K: problem"."""
    if not isinstance(entry, dict):
        raise ValueError(f"key (entry): expected a mapping with {', '.join(_SUBJECT_KEYS)}, got {entry!r}")
    for key in entry:
        if key not in _SUBJECT_KEYS:
            raise ValueError(f"key {key}: unknown (expected {', '.join(_SUBJECT_KEYS)})")
    for key in ("token", "class", "look", "colors"):
        if key not in entry:
            raise ValueError(f"key {key}: missing")

    def check(key: str, fn):
        try:
            return fn()
        except ValueError as e:
            raise ValueError(f"key {key}: {e}") from None

    token = check("token", lambda: _one_of(entry["token"], RARE_TOKENS, "a rare token of the toy tokenizer"))
    class_noun = check("class", lambda: _one_of(entry["class"], SHAPES, "a class"))
    kind = check("look", lambda: _one_of(entry["look"], LOOK_KINDS, "a look kind of the renderer"))
    colors = entry["colors"]
    if not isinstance(colors, list) or len(colors) != 2:
        raise ValueError(f"key colors: expected two colors, got {colors!r}")
    a, b = (check(f"colors[{i}]", lambda c=c: _color(c)) for i, c in enumerate(colors))
    photos_given = entry.get("photos")
    if photos_given is None:
        photos = default_photos(token)
    else:
        if not isinstance(photos_given, list) or not 1 <= len(photos_given) <= 20:
            raise ValueError(f"key photos: expected a list of 1-20 contexts, got {photos_given!r}")
        photos = []
        for i, p in enumerate(photos_given):
            if not isinstance(p, dict) or set(p) != set(_PHOTO_KEYS):
                raise ValueError(f"key photos[{i}]: expected {{background, position, size}}, got {p!r}")
            photos.append(PhotoContext(
                check(f"photos[{i}].background", lambda p=p: _one_of(p["background"], BACKGROUNDS, "a background")),
                check(f"photos[{i}].position", lambda p=p: _one_of(p["position"], POSITIONS, "a position")),
                check(f"photos[{i}].size", lambda p=p: _one_of(p["size"], SIZES, "a size")),
            ))
        photos = tuple(photos)
        if {p.background for p in photos} == set(BACKGROUNDS):
            raise ValueError("key photos: they show every background, leaving none new for the prompts")
        if {p.position for p in photos} == set(POSITIONS):
            raise ValueError("key photos: they show every position, leaving none new for the prompts")
    return Subject(token, class_noun, Look(kind, a, b), photos)


def parse_subjects(data: Any, source: str) -> dict[str, Subject]:
    """The `{subjects: [...]}` mapping of a subjects file → subjects by name; `UserError` naming the
    subject and the key when something is wrong."""
    if not isinstance(data, dict) or set(data) != {"subjects"} or not isinstance(data["subjects"], list):
        raise UserError(f"{source}: expected a mapping with one key, subjects: a list of subjects")
    if not data["subjects"]:
        raise UserError(f"{source}: subjects: the list is empty")
    out: dict[str, Subject] = {}
    for i, entry in enumerate(data["subjects"]):
        label = f"#{i + 1}"
        if isinstance(entry, dict) and isinstance(entry.get("token"), str) and isinstance(entry.get("class"), str):
            label += f" ({entry['token']}_{entry['class']})"
        try:
            subject = subject_from_dict(entry, label)
        except ValueError as e:
            raise UserError(f"{source}: subject {label}: {e}") from None
        if subject.name in out:
            raise UserError(f"{source}: subject {label}: key token: {subject.name} is defined twice")
        out[subject.name] = subject
    return out


@cache
def _builtin() -> dict[str, Subject]:
    path = builtin_subjects_path()
    return parse_subjects(safe_load(path.read_text(encoding="utf-8")), str(path))


def load_subjects(path: str | Path | None = None) -> dict[str, Subject]:
    """The subjects of a subjects file (YAML) by name; `None`: the built-in ones."""
    if path is None:
        return dict(_builtin())
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"subjects file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read subjects file {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', None) or 'parse error'})") from None
    return parse_subjects(data, str(path))


def subjects_yaml(subjects) -> str:
    """A subjects file holding `subjects` (an iterable of `Subject`), every photo listed."""
    return yaml.safe_dump({"subjects": [s.to_dict() for s in subjects]}, sort_keys=False,
                          default_flow_style=None)


SUBJECTS: dict[str, Subject] = _builtin()


def get_subject(name: str, subjects_file: str | Path | None = None) -> Subject:
    """The subject called `name` ("sks_star"), or whose token is `name` ("sks"), in `subjects_file`
    (default: the built-in subjects)."""
    known = SUBJECTS if subjects_file is None else load_subjects(subjects_file)
    if name in known:
        return known[name]
    by_token = [s for s in known.values() if s.token == name]
    if len(by_token) == 1:
        return by_token[0]
    where = "" if subjects_file is None else f" in {subjects_file}"
    if by_token:
        raise UserError(f"token {name!r} names several subjects{where}: {', '.join(s.name for s in by_token)}")
    raise UserError(f"unknown subject {name!r}{where}; known subjects: {', '.join(known)}")


def export_subjects(folder: str | Path, names: list[str] | None = None,
                    subjects_file: str | Path | None = None) -> Path:
    """Export subjects in the DreamBench layout plus machine-readable prompts.

    Writes `<subject>/NN.png`, `prompts_and_classes.txt` (DreamBench's classes table, then each
    subject's prompts), `subjects.json` (token, class, instance prompt, photos' contexts, prompts per
    subject) and `subjects.yaml` (a subjects file of them, every photo listed).
    """
    folder = Path(folder)
    known = load_subjects(subjects_file)
    subjects = [get_subject(n, subjects_file) for n in (names or list(known))]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder}: {e.strerror}") from None
    lines = ["Classes", "", "subject_name,class"] + [f"{s.name},{s.class_noun}" for s in subjects]
    lines += ["", "Prompts", ""]
    meta = {}
    for s in subjects:
        s.export(folder)
        lines += [f"{s.name}: {p}" for p in s.eval_prompts()]
        meta[s.name] = {"token": s.token, "class": s.class_noun, "instance_prompt": s.instance_prompt,
                        "photos": s.to_dict()["photos"], "prompts": s.eval_prompts()}
    (folder / "prompts_and_classes.txt").write_text("\n".join(lines) + "\n")
    (folder / "subjects.json").write_text(json.dumps(meta, indent=1) + "\n")
    (folder / "subjects.yaml").write_text(subjects_yaml(subjects))
    return folder
