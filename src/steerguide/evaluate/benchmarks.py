"""Benchmarks: subjects (name, class noun, unique token, reference images) and their evaluation prompts.

DreamBench (Ruiz et al., CVPR 2023) is read in its original layout, so the 5-subject sample and the full
30-subject dataset load the same way:

    ROOT/prompts_and_classes.txt     "subject_name,class" rows, then the object and live-subject prompt lists
    ROOT/<subject>/*.jpg             the subject's photos (training images and fidelity references)

Prompts are stored as `'a {0} {1} in the jungle'.format(unique_token, class_token)`; we substitute the
token and the class noun. Live subjects (cats and dogs, as in the DreamBooth evaluation) get the live
prompt list ("wearing a red hat", ...), every other subject the object list. A folder with a
`subjects.json` (each subject's own token, class and prompts, as `steerguide toyworld export-subjects`
writes) is read from that file instead.

Other benchmarks (the toy world's) come from plugins, registered in `BENCHMARKS` by name: a function of
the config mapping returning a `Benchmark`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from steerguide.errors import UserError
from steerguide.plugins import Registry

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# DreamBooth's evaluation gives the live-subject prompts to its cat and dog subjects.
LIVE_CLASSES = frozenset({"cat", "dog"})



def without_token(prompt: str, token: str) -> str:
    """The prompt as a text-alignment metric should read it: without the unique token, which a pretrained
    CLIP text encoder does not know ("a sks dog in the snow" -> "a dog in the snow")."""
    return re.sub(rf"\s*\b{re.escape(token)}\b", "", prompt).strip()

@dataclass
class BenchSubject:
    """One subject: what to personalize on and what to score against.

    `prompts` are ready to sample (token and class noun substituted); `references` are image paths, or
    empty when `load_references` supplies in-memory images (the toy world renders its own, from
    `definition`).
    """

    name: str
    class_noun: str
    token: str
    prompts: list[str]
    references: list[Path] = field(default_factory=list)
    live: bool = False
    load_references: Callable[[], list] | None = field(default=None, repr=False)
    load_fidelity_references: Callable[[], list] | None = field(default=None, repr=False)
    # What defines a generated subject (a toy subject's token, class, look, colors and photos), for cache
    # keys; None for photos on disk.
    definition: dict | None = None

    @property
    def instance_prompt(self) -> str:
        """The training caption, DreamBooth style: "a sks dog"."""
        return f"a {self.token} {self.class_noun}"

    def reference_images(self) -> list:
        """The subject's real images as RGB PIL images (training set and fidelity references)."""
        if self.load_references is not None:
            return [im.convert("RGB") for im in self.load_references()]
        from steerguide.images import open_rgb

        return [open_rgb(path, "reference image") for path in self.references]

    def fidelity_references(self) -> list:
        """What fidelity metrics compare against: the real images (DreamBench), or renders of the subject
        in contexts other than its training photos (toy world), so that copying the training context
        earns nothing."""
        if self.load_fidelity_references is not None:
            return [im.convert("RGB") for im in self.load_fidelity_references()]
        return self.reference_images()

    def text_prompt(self, prompt: str) -> str:
        return without_token(prompt, self.token)


@dataclass
class Benchmark:
    name: str
    subjects: list[BenchSubject]
    root: Path | None = None

    def subject(self, name: str) -> BenchSubject:
        for s in self.subjects:
            if s.name == name:
                return s
        raise UserError(
            f"benchmark {self.name!r} has no subject {name!r}; it has: "
            f"{', '.join(s.name for s in self.subjects)}"
        )


def parse_prompts_and_classes(text: str, source: str = "prompts_and_classes.txt"):
    """Parse DreamBench's `prompts_and_classes.txt`: returns (classes, object_prompts, live_prompts).

    `classes` maps subject name -> class noun, in file order; prompts keep their `{0}` (unique token) and
    `{1}` (class noun) placeholders.
    """
    lines = [line.strip() for line in text.splitlines()]
    classes: dict[str, str] = {}
    try:
        start = lines.index("subject_name,class") + 1
    except ValueError:
        raise UserError(
            f"{source}: no 'subject_name,class' header (not a DreamBench prompts_and_classes.txt)"
        ) from None
    for line in lines[start:]:
        if not line:
            if classes:
                break
            continue
        if line == "Prompts":
            break
        name, sep, noun = line.partition(",")
        if not sep or not name.strip() or not noun.strip():
            raise UserError(f"{source}: malformed class row {line!r}; expected 'subject_name,class'")
        classes[name.strip()] = noun.strip()
    if not classes:
        raise UserError(f"{source}: no subject classes listed under 'subject_name,class'")

    def prompt_list(title: str) -> list[str]:
        try:
            i = next(k for k, line in enumerate(lines) if line.lower() == title.lower())
        except StopIteration:
            raise UserError(f"{source}: missing the '{title}' section") from None
        prompts = []
        for line in lines[i + 1 :]:
            if line.startswith("]"):
                break
            m = re.match(r"""^(['"])(.*)\1\s*\.format\(""", line)
            if m:
                prompts.append(m.group(2))
        if not prompts:
            raise UserError(f"{source}: the '{title}' section lists no prompts")
        return prompts

    return classes, prompt_list("Object Prompts"), prompt_list("Live Subject Prompts")


def load_dreambench(
    root: str | Path,
    subjects: Sequence[str] | None = None,
    token: str = "sks",
    num_prompts: int | None = None,
) -> Benchmark:
    """Read a DreamBench folder. `subjects`: names to keep (default: every listed subject whose folder
    exists, so the 5-subject sample loads); `num_prompts`: the first N prompts of each list."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"DreamBench root {str(root)!r} is not a directory")
    if (root / "subjects.json").is_file():
        return _load_subjects_json(root, subjects, num_prompts)
    listing = root / "prompts_and_classes.txt"
    if not listing.is_file():
        raise UserError(f"DreamBench root {str(root)!r} has no prompts_and_classes.txt")
    classes, object_prompts, live_prompts = parse_prompts_and_classes(listing.read_text(), str(listing))
    if subjects is None:
        names = [n for n in classes if (root / n).is_dir()]
        if not names:
            raise UserError(f"DreamBench root {str(root)!r}: none of the listed subjects has a folder")
    else:
        names = list(subjects)
        for n in names:
            if n not in classes:
                raise UserError(f"DreamBench subject {n!r} is not listed in {listing}")
            if not (root / n).is_dir():
                raise UserError(f"DreamBench subject {n!r} has no folder {str(root / n)!r}")
    if num_prompts is not None and num_prompts < 1:
        raise UserError(f"num_prompts must be >= 1, got {num_prompts}")
    out = []
    for n in names:
        images = sorted(p for p in (root / n).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"DreamBench subject {n!r}: no images in {str(root / n)!r}")
        noun = classes[n]
        live = noun in LIVE_CLASSES
        templates = (live_prompts if live else object_prompts)[:num_prompts]
        prompts = [t.format(token, noun) for t in templates]
        out.append(
            BenchSubject(name=n, class_noun=noun, token=token, prompts=prompts, references=images, live=live)
        )
    return Benchmark(name="dreambench", subjects=out, root=root)


def _load_subjects_json(root: Path, subjects: Sequence[str] | None, num_prompts: int | None) -> Benchmark:
    """A DreamBench-layout folder whose `subjects.json` gives each subject's own token, class and prompts
    (what `steerguide toyworld export-subjects` writes): {name: {token, class, prompts: [...]}}."""
    import json

    path = root / "subjects.json"
    try:
        meta = json.loads(path.read_text())
        names = list(meta) if subjects is None else list(subjects)
        out = []
        for n in names:
            if n not in meta:
                raise UserError(f"subject {n!r} is not listed in {path}")
            if not (root / n).is_dir():
                raise UserError(f"subject {n!r} has no folder {str(root / n)!r}")
            entry = meta[n]
            images = sorted(p for p in (root / n).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise UserError(f"subject {n!r}: no images in {str(root / n)!r}")
            out.append(
                BenchSubject(
                    name=n,
                    class_noun=entry["class"],
                    token=entry["token"],
                    prompts=list(entry["prompts"])[:num_prompts],
                    references=images,
                )
            )
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(
            f"{path}: expected {{subject: {{token, class, prompts}}}} ({type(e).__name__}: {e})"
        ) from None
    return Benchmark(name="dreambench", subjects=out, root=root)


def _dreambench(spec: dict) -> Benchmark:
    if not spec.get("root"):
        raise UserError("benchmark.root: required for the dreambench benchmark (the dataset folder)")
    return load_dreambench(spec["root"], spec.get("subjects"), spec.get("token", "sks"), spec.get("num_prompts"))


BENCHMARKS: Registry[Callable[[dict], Benchmark]] = Registry("benchmark")
BENCHMARKS.register("dreambench", _dreambench)


def load_benchmark(spec: dict) -> Benchmark:
    """Build a benchmark from a config mapping: {name: dreambench, root: ..., subjects, token, num_prompts},
    or a plugin's ({name: toy, subjects, num_prompts, subjects_file})."""
    return BENCHMARKS.lookup(spec.get("name"))(spec)
