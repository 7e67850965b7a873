"""What the web UI does, without the UI: compare methods, open a sweep, train a personalization.

`Studio` holds the loaded models and a lock: every sampling call takes the lock, so that requests from
several users run one after another on a pipeline and never see each other's guidance installed (the
guidance wrapper and θ_ω live on the shared denoiser while a call runs). Inputs are checked with the
library's own checks, so a bad value raises the `UserError` whose one line the CLI would print.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from steerguide import limits
from steerguide.bases import named_base, resolve_base
from steerguide.errors import UserError
from steerguide.methods import described, get, order_of, registered
from steerguide.methods.ag import AG
from steerguide.methods.cfg import CFG
from steerguide.methods.pg import PG

METHOD_NAMES = {m.name: m.title for m in registered()}  # the Compare tab's choices and galleries
MAX_IMAGES = 16  # per prompt and method: the page shows them all
MAX_STEPS = 500

ProgressFn = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class MethodImages:
    """One method's row: images (prompt-major), and per image its judges' scores (may be empty)."""

    method: str
    label: str
    images: list[Image.Image]
    prompts: list[str]
    seeds: list[int]
    scores: list[dict[str, float]] = field(default_factory=list)

    def mean(self, name: str) -> float | None:
        values = [s[name] for s in self.scores if name in s]
        return sum(values) / len(values) if values else None


# -- judges --------------------------------------------------------------------------------------------


class Judges:
    """Fidelity and text scores: the toy judges on the toy world; DINO / CLIP-T when their weights are given."""

    def __init__(self, toy: bool, dino: str | None = None, clip: str | None = None) -> None:
        from steerguide.evaluate.metrics import build_metrics

        spec: dict = {}
        if toy:
            spec = {"toy_fidelity": {}, "toy_text": {}}
        if dino:
            spec["dino"] = {"model": dino}
        if clip:
            spec["clip_t"] = {"model": clip}
        self.metrics = build_metrics(spec) if spec else []

    def score(
        self,
        images: list[Image.Image],
        prompts: list[str],
        references: list[Image.Image] | None,
        token: str | None,
    ) -> list[dict[str, float]]:
        scores: list[dict[str, float]] = [{} for _ in images]
        for metric in self.metrics:
            if metric.axis == "fidelity":
                if not references:
                    continue  # no photos of the subject known: no fidelity to score
                prepared = metric.prepare(references)
                axis = "fidelity"
            else:
                prepared = metric.prepare([])
                axis = "text"
            texts = prompts if metric.raw_prompts or not token else [_strip_token(p, token) for p in prompts]
            for i, (image, text) in enumerate(zip(images, texts, strict=True)):
                try:
                    value = metric.score([image], [text], prepared)[0]
                except UserError:
                    continue  # e.g. a prompt the toy text judge cannot read: no text score for it
                scores[i].setdefault(axis, float(value))
        return scores


def _strip_token(prompt: str, token: str) -> str:
    return re.sub(rf"\s*\b{re.escape(token)}\b", "", prompt).strip()


# -- the personalization's subject ------------------------------------------------------------------------


def subject_of(personalization: str | None) -> tuple[list[Image.Image] | None, str | None]:
    """(photos of the subject, its token) for a personalization trained by `steerguide train`, else (None, None)."""
    if not personalization:
        return None, None
    record_path = Path(personalization) / "train.json"
    if not record_path.is_file():
        return None, None
    from steerguide.train.results import read_record

    record = read_record(personalization)
    config = record.get("config", {})
    token = record.get("user_token") or config.get("token")
    toy_subject = (config.get("extra") or {}).get("toy_subject")
    if toy_subject:
        from steerguide import toyworld

        return toyworld.get_subject(toy_subject).reference_images(), token
    images = config.get("images")
    if isinstance(images, str) and Path(images).is_dir():
        from steerguide.train.data import load_images

        return [im for _, im in load_images(images)], token
    return None, token


# -- sweeps ------------------------------------------------------------------------------------------------


@dataclass
class SweepView:
    """An opened sweep folder: its rows, the settings by display name, and the trade-off plot."""

    folder: Path
    rows: list[dict]
    settings: dict[str, tuple]  # display name -> setting key
    x_metric: str
    y_metric: str
    plot: Path


def _setting_name(row: dict) -> str:
    return described(row["method"]).label(
        row["scale"], row.get("omega"), row.get("omega_schedule"), row.get("interval"), title=True
    )


def open_sweep(folder: str | Path, plot_dir: Path) -> SweepView:
    from steerguide.evaluate.report import load_results, metric_axes, setting_key, summarize, tradeoff_plot

    folder = Path(str(folder).strip()).expanduser()
    if not str(folder).strip() or not folder.is_dir():
        raise UserError(f"sweep folder not found: {folder}")
    rows = load_results(folder)
    axes = metric_axes(folder, rows)
    fidelity = [m for m, a in axes.items() if a == "fidelity"]
    text = [m for m, a in axes.items() if a == "text"]
    if not fidelity or not text:
        raise UserError(f"{folder}: the sweep needs a fidelity and a text metric for a trade-off plot")
    plot_dir.mkdir(parents=True, exist_ok=True)
    plot = tradeoff_plot(summarize(rows), fidelity[0], text[0], plot_dir / f"tradeoff-{time.time_ns()}.png")
    settings: dict[str, tuple] = {}
    for row in sorted(rows, key=lambda r: (order_of(r["method"]), r["scale"])):
        settings.setdefault(_setting_name(row), setting_key(row))
    return SweepView(folder, rows, settings, fidelity[0], text[0], plot)


def _image_of(view: SweepView, row: dict) -> Image.Image | None:
    path = Path(row.get("image", ""))
    for candidate in (path, view.folder / path, view.folder / "images" / path.name):
        if candidate.is_file():
            with Image.open(candidate) as im:
                return im.convert("RGB")
    return None


def setting_images(view: SweepView, name: str, limit: int = 12):
    """The chosen setting's images beside CFG's at the same subject, prompt and seed (CFG at the same
    scale when the sweep has it, else the nearest); returns (chosen, cfg) lists of (image, caption)."""
    from steerguide.evaluate.report import setting_key

    if name not in view.settings:
        raise UserError(f"no setting {name!r} in {view.folder}")
    key = view.settings[name]
    chosen = [r for r in view.rows if setting_key(r) == key]
    cfg_rows = [r for r in view.rows if r["method"] == CFG.name]
    scales = sorted({r["scale"] for r in cfg_rows})
    scale = min(scales, key=lambda s: abs(s - chosen[0]["scale"])) if scales else None
    cfg_by_case = {(r["subject"], r["prompt_index"], r["seed"]): r for r in cfg_rows if r["scale"] == scale}

    def caption(row: dict) -> str:
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in row.get("metrics", {}).items() if v is not None)
        return f"{row['subject']} · seed {row['seed']} · {row['prompt']}" + (
            f" · {metrics}" if metrics else ""
        )

    left, right = [], []
    for row in chosen[:limit]:
        image = _image_of(view, row)
        if image is None:
            continue
        left.append((image, caption(row)))
        twin = cfg_by_case.get((row["subject"], row["prompt_index"], row["seed"]))
        twin_image = _image_of(view, twin) if twin else None
        if twin_image is not None:
            right.append((twin_image, f"CFG w={scale:g} · " + caption(twin)))
    return left, right


# -- the studio --------------------------------------------------------------------------------------------


class Studio:
    """The models behind the UI, and what it can do with them."""

    def __init__(
        self,
        base: str | None = None,
        personalization: str | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        workdir: str | Path = "steerguide-ui",
        dino: str | None = None,
        clip: str | None = None,
    ) -> None:
        if (device, dtype) != ("cpu", "float32"):  # the defaults need no check, and no torch (seconds) yet
            from steerguide.loading import resolve_device, resolve_dtype

            resolve_device(device)
            resolve_dtype(dtype)
        self.toy = base is None or _is_toy_base(base)  # "toy", or its folder (a preset's)
        if self.toy:
            base = resolve_base("toy")
        elif str(base).startswith((".", "/", "~")) and not Path(base).expanduser().exists():
            raise UserError(f"base model not found: {base} (no such file or folder)")
        if personalization and not Path(personalization).exists():
            raise UserError(f"personalization not found: {personalization}")
        for what, path in (("DINO", dino), ("CLIP", clip)):
            if path and not Path(path).exists():
                raise UserError(f"{what} weights not found: {path}")
        self.base = str(base)
        self.personalization = personalization
        self.device, self.dtype = device, dtype
        self.workdir = Path(workdir)
        self._dino, self._clip = dino, clip
        self._judges: Judges | None = None
        self._loaded: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()  # one sampling call at a time on the shared pipelines

    def serves(self, base: str) -> bool:
        """Whether `base` (a preset's, say) names the base model this studio samples with."""
        if _is_toy_base(base):
            return self.toy
        if base == self.base:
            return True
        mine, theirs = Path(self.base).expanduser(), Path(base).expanduser()
        return mine.exists() and theirs.exists() and mine.resolve() == theirs.resolve()

    # -- models --------------------------------------------------------------------------------------------
    @property
    def judges(self) -> Judges:
        if self._judges is None:
            self._judges = Judges(self.toy, self._dino, self._clip)
        return self._judges

    def _pipeline(self, personalization: str | None):
        """(pipe, personalization) for this path; a personalization lives on its own pipeline (two kept)."""
        from steerguide.loading import load_personalization, load_pipeline

        key = personalization or ""
        if key not in self._loaded:
            pipe = load_pipeline(self.base, device=self.device, dtype=self.dtype)
            personal = load_personalization(pipe, personalization or None)
            self._loaded[key] = (pipe, personal)
            while len(self._loaded) > 2:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return self._loaded[key]

    def warm_up(self) -> None:
        """Load the default pipeline and the judges (in the background at start, so the page is up at once)."""
        with self._lock:
            self._pipeline(self.personalization)
            self.judges  # noqa: B018

    # -- compare ---------------------------------------------------------------------------------------------
    def compare(
        self,
        prompts: list[str],
        *,
        methods: list[str],
        scale: float,
        omega: float,
        ag_omega: float = 0.0,
        omega_schedule: str = "constant",
        negative_prompt: str | None = None,
        seed: int = 0,
        steps: int = 20,
        num_images: int = 2,
        personalization: str | None = None,
        on_progress: ProgressFn | None = None,
    ) -> list[MethodImages]:
        """Sample every prompt with each method at the same seeds; score the images with the judges."""
        from steerguide.guidance import GuidanceConfig
        from steerguide.sampling import sample

        prompts = [p.strip() for p in prompts if p and p.strip()]
        if not prompts:
            raise UserError("no prompt given: write one prompt per line")
        methods = [m.lower() for m in methods]
        if not methods:
            raise UserError("no method chosen: pick CFG, AG and/or PG")
        for name, value, low, high in (
            ("steps", steps, 1, MAX_STEPS),
            ("number of images", num_images, 1, MAX_IMAGES),
        ):
            if value is None or not float(value).is_integer() or not low <= value <= high:
                raise UserError(f"{name} must be a whole number from {low} to {high}, got {value}")
        if seed is None or not float(seed).is_integer() or seed < 0:
            raise UserError(f"seed must be a whole number >= 0, got {seed}")
        if scale is None or (isinstance(scale, float) and math.isnan(scale)):
            raise UserError("guidance scale must be a number >= 0")
        schedule = (omega_schedule or "constant").strip()
        configs = []
        for method in methods:  # all checked before any work starts
            first = {PG.name: omega, AG.name: ag_omega}.get(method)  # the page's slider of each
            configs.append(
                GuidanceConfig(
                    method=method,
                    scale=float(scale),
                    omega=None if first is None else float(first),
                    omega_schedule=schedule if get(method).takes_omega else "constant",
                )
            )
        personalization = (personalization or "").strip() or None
        if personalization and not Path(personalization).expanduser().exists():
            raise UserError(f"personalization not found: {personalization}")
        if personalization is None and any(c.spec.uses_weak_model for c in configs):
            raise UserError(
                "AG and PG need a personalization: give a LoRA or fine-tune path, or train one in Personalize"
            )
        negative = (negative_prompt or "").strip() or None
        steps, num_images, seed = int(steps), int(num_images), int(seed)
        limits.seed("seed", seed, num_images)
        total = steps * len(configs)
        done = 0

        with self._lock:
            pipe, personal = self._pipeline(personalization)
            references, token = subject_of(personalization)
            rows = []
            for config in configs:

                def advance(pipeline, step, timestep, callback_kwargs, _what=config.method):
                    nonlocal done
                    done += 1
                    if on_progress is not None:
                        on_progress(min(done, total), total, METHOD_NAMES[_what])
                    return callback_kwargs

                result = sample(
                    pipe,
                    personal,
                    config,
                    prompts,
                    num_images=num_images,
                    seed=seed,
                    steps=steps,
                    negative_prompt=negative,
                    batch_size=len(prompts) * num_images,
                    progress=False,
                    callback_on_step_end=advance,
                )
                images = [im for row in result.images for im in row]
                image_prompts = [p for p in prompts for _ in range(num_images)]
                seeds = [seed + i for _ in prompts for i in range(num_images)]
                row = MethodImages(config.method, _label(config), images, image_prompts, seeds)
                row.scores = self.judges.score(images, image_prompts, references, token)
                rows.append(row)
        return rows

    # -- personalize ---------------------------------------------------------------------------------------------
    def train(
        self,
        *,
        toy_subject: str | None = None,
        photos: str | None = None,
        token: str = "sks",
        class_noun: str = "",
        steps: int | None = None,
        on_progress: ProgressFn | None = None,
    ) -> Path:
        """Train a LoRA on a toy subject or a folder of photos, into the work folder; returns its folder."""
        from steerguide.train import TrainConfig, train
        from steerguide.train.data import load_images
        from steerguide.train.trainer import checkpoints

        if steps is not None and (not float(steps).is_integer() or not 1 <= steps <= 100_000):
            raise UserError(f"steps must be a whole number >= 1, got {steps}")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if toy_subject:
            from steerguide import toyworld
            from steerguide.toyworld.recipes import toy_config

            subject = toyworld.get_subject(toy_subject)
            out = self.workdir / "personalizations" / f"{subject.name}-{stamp}"
            overrides = {"steps": int(steps)} if steps else {}
            config = toy_config(subject.name, out=out, base=self.base, **overrides)
        else:
            if not photos or not str(photos).strip():
                raise UserError("no photo folder given")
            load_images(str(photos).strip())  # the trainer's own check: missing, empty or corrupt photos
            if not token.strip():
                raise UserError("the token must not be empty")
            out = self.workdir / "personalizations" / f"{Path(str(photos).strip()).name}-{stamp}"
            config = TrainConfig(
                base=self.base,
                images=str(photos).strip(),
                out=out,
                token=token.strip(),
                class_noun=class_noun.strip(),
                method="lora",
                steps=int(steps) if steps else None,
            )
        total = config.max_steps
        config.checkpoint_every = max(1, total // 20)  # checkpoints are also how progress is seen here
        config.checkpoints_total_limit = 1
        with ThreadPoolExecutor(max_workers=1) as pool:
            job = pool.submit(train, config, False)
            while not job.done():
                found = checkpoints(out)
                if on_progress is not None:
                    on_progress(int(found[-1].name[5:]) if found else 0, total, "training")
                time.sleep(0.5)
            folder = Path(job.result())  # re-raises a UserError from the trainer
        if on_progress is not None:
            on_progress(total, total, "training")
        return folder


def _is_toy_base(base: str) -> bool:
    """"toy", or a path to the toy world's shipped base model (what a toy tuning writes into its preset)."""
    found = named_base(base)
    return found is not None and found[0] == "toy"


def _label(config) -> str:
    name = config.spec.title
    if not config.spec.takes_omega:
        return f"{name} w={config.scale:g}"
    schedule = config.omega_schedule if config.omega_schedule != "constant" else ""
    return f"{name} w={config.scale:g} ω={config.omega:g} {schedule}".strip()
