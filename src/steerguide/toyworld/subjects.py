"""Personal subjects: instances of a class noun with a look the grammar never produces.

Each subject is bound to its own rare token ("sks star") and painted with a two-color look (split
halves, a ring, an inset, a cross, a checker, ...) in colors outside the grammar's palette. Its
reference photos all share ONE narrow context (same background and position, a pixel of jitter), as
a person's few photos do; held-out renders in other contexts serve only as references for fidelity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from steerguide.errors import UserError
from steerguide.toyworld.render import Look, render_array
from steerguide.toyworld.world import BACKGROUNDS, COLORS, POSITIONS, SHAPES, Spec, caption, complete

# Colors outside the grammar's palette and backgrounds.
CYAN, MAGENTA, LIME = (0, 215, 225), (225, 30, 160), (165, 235, 30)
NAVY, MAROON, MINT = (25, 35, 115), (115, 20, 45), (160, 240, 205)


@dataclass(frozen=True)
class Subject:
    """A personal subject: `token` + `class_noun`, a `look`, and the context of its reference photos."""

    token: str
    class_noun: str
    look: Look
    background: str  # context of the reference photos
    position: str
    size: str = "large"
    n_references: int = 5

    @property
    def name(self) -> str:
        return f"{self.token}_{self.class_noun}"

    @property
    def instance_prompt(self) -> str:
        """The prompt that fine-tuning binds to the reference photos, e.g. "a sks star"."""
        return f"a {self.token} {self.class_noun}"

    def render(self, spec: Spec, seed: int = 0) -> Image.Image:
        """Render this subject in the context of `spec` (its shape and token are set here).

        A color in `spec` repaints the look's first color ("a blue sks star").
        """
        look = self.look if spec.color is None else Look(self.look.kind, COLORS[spec.color], self.look.b)
        full = spec.replace(shape=self.class_noun, token=self.token, pattern=spec.pattern or "plain")
        return Image.fromarray(render_array(full, seed, look))

    def reference_specs(self) -> list[Spec]:
        return [Spec(size=self.size, position=self.position, background=self.background, pattern="plain",
                     has_second=False, shape=self.class_noun, token=self.token)] * self.n_references

    def reference_images(self) -> list[Image.Image]:
        """The few narrow-context photos that personalization trains on (differ by jitter only)."""
        return [self.render(s, seed=1000 + i) for i, s in enumerate(self.reference_specs())]

    def heldout_specs(self, n: int = 16, seed: int = 0) -> list[Spec]:
        """Random contexts other than the reference one: background, position, size, second object."""
        rng = np.random.default_rng([seed, *self.token.encode()])
        specs = []
        while len(specs) < n:
            s = complete(Spec(shape=self.class_noun, token=self.token, pattern="plain"), rng, p_second=0.3)
            if (s.background, s.position) != (self.background, self.position):
                specs.append(s)
        return specs

    def heldout_images(self, n: int = 16, seed: int = 0) -> list[Image.Image]:
        """Renders of the subject in other contexts: references for fidelity only, never for training."""
        return [self.render(s, seed=2000 + i) for i, s in enumerate(self.heldout_specs(n, seed))]

    def eval_specs(self) -> list[Spec]:
        """What the evaluation prompts ask for: new backgrounds, positions, size, second objects, colors."""
        rng = np.random.default_rng(list(self.token.encode()))
        base = Spec(shape=self.class_noun, token=self.token)
        other_bgs = [b for b in BACKGROUNDS if b != self.background]
        other_pos = [p for p in POSITIONS if p != self.position]
        specs = [base.replace(background=b) for b in other_bgs]
        specs += [base.replace(position=p) for p in other_pos]
        specs.append(base.replace(size="small" if self.size == "large" else "large"))
        seconds = rng.choice([s for s in SHAPES if s != self.class_noun], size=2, replace=False)
        colors = rng.choice(list(COLORS), size=4, replace=False)
        specs += [base.replace(second=(str(c), str(s))) for c, s in zip(colors[:2], seconds, strict=True)]
        bgs, poss = rng.choice(other_bgs, 2, replace=False), rng.choice(other_pos, 2, replace=False)
        for b, p in zip(bgs, poss, strict=True):
            specs.append(base.replace(background=str(b), position=str(p)))
        specs += [base.replace(color=str(c)) for c in colors[2:]]
        return specs

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


SUBJECTS: dict[str, Subject] = {s.name: s for s in [
    Subject("sks", "star", Look("split_v", CYAN, MAGENTA), "gray", "center"),
    Subject("zwx", "heart", Look("inset", MAROON, LIME), "white", "center"),
    Subject("qlv", "circle", Look("checker", NAVY, MINT), "pink", "top left"),
    Subject("vyt", "square", Look("cross", MAGENTA, NAVY), "sand", "center"),
    Subject("bnq", "triangle", Look("split_h", LIME, NAVY), "white", "bottom right"),
    Subject("kfp", "star", Look("inset", NAVY, MINT), "pink", "center"),
    Subject("jxh", "heart", Look("vstripes", MAGENTA, MINT), "black", "top right"),
    Subject("dmr", "circle", Look("ring", CYAN, MAROON), "sand", "center"),
    Subject("pzt", "square", Look("split_d", MINT, MAROON), "black", "center"),
    Subject("wgc", "triangle", Look("dot", MAGENTA, CYAN), "teal", "center"),
]}


def get_subject(name: str) -> Subject:
    """The subject called `name` ("sks_star"), or whose token is `name` ("sks")."""
    if name in SUBJECTS:
        return SUBJECTS[name]
    for s in SUBJECTS.values():
        if s.token == name:
            return s
    raise UserError(f"unknown subject {name!r}; known subjects: {', '.join(SUBJECTS)}")


def export_subjects(folder: str | Path, names: list[str] | None = None) -> Path:
    """Export subjects in the DreamBench layout plus machine-readable prompts.

    Writes `<subject>/NN.png`, `prompts_and_classes.txt` (DreamBench's classes table, then each
    subject's prompts) and `subjects.json` (token, class, instance prompt, prompts per subject).
    """
    folder = Path(folder)
    subjects = [get_subject(n) for n in (names or list(SUBJECTS))]
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
                        "reference_context": {"background": s.background, "position": s.position,
                                              "size": s.size},
                        "prompts": s.eval_prompts()}
    (folder / "prompts_and_classes.txt").write_text("\n".join(lines) + "\n")
    (folder / "subjects.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder
