"""`steerguide toyworld ...`: the embedded default world from the command line."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from PIL import Image

from steerguide import limits
from steerguide.errors import Interrupted, UserError, first_line
from steerguide.files import check_writable, check_writable_file, save_image_atomic
from steerguide.images import open_rgb
from steerguide.progress import bar as progress_bar

toyworld = typer.Typer(help="The embedded toy world: base model, subjects, judges.", no_args_is_help=True,
                       rich_markup_mode=None)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_DEFAULT_WORK = Path("toyworld_build")
SubjectsFile = Annotated[
    Path | None,
    typer.Option("--subjects-file", help="a subjects file (YAML); default: the built-in subjects"),
]


def register(app: typer.Typer) -> None:
    app.add_typer(toyworld, name="toyworld")


@contextmanager
def _progress(description: str, total: int | None):
    with progress_bar(transient=True, stderr=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextmanager
def _interrupted(what_was_kept):
    """Ctrl-C inside the block says what was kept (`what_was_kept()`) and how to continue."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(what_was_kept()) from None


def _dir_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@toyworld.command()
def info(subjects_file: SubjectsFile = None) -> None:
    """Where the base model and judges lie, and the personal subjects."""
    from steerguide.toyworld.assets import base_model_path, train_log_path
    from steerguide.toyworld.fidelity import default_weights
    from steerguide.toyworld.subjects import load_subjects

    subjects = load_subjects(subjects_file)

    base = base_model_path()
    present = (base / "model_index.json").exists()
    size = f"{_dir_size(base) / 2**20:.1f} MiB" if present else "missing"
    print(f"base model: {base} ({size})")
    print(f"fidelity judge: {default_weights()} ({'present' if default_weights().exists() else 'missing'})")
    if train_log_path().exists():
        t = json.loads(train_log_path().read_text())["timings"]
        print("training time: " + ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in t.items()))
    print(f"subjects ({len(subjects)}):")
    for s in subjects.values():
        photos = "; ".join(f"{p.size} on {p.background}, {p.position}" for p in s.photos)
        print(f"  {s.name:14s} look {s.look.kind:8s} instance prompt {s.instance_prompt!r}  photos: {photos}")


@toyworld.command()
def prompts(subject: Annotated[str, typer.Argument(help="subject name (sks_star) or token (sks)")],
            subjects_file: SubjectsFile = None) -> None:
    """Print a subject's evaluation prompts, one a line."""
    from steerguide.toyworld.subjects import get_subject

    for p in get_subject(subject, subjects_file).eval_prompts():
        print(p)


@toyworld.command("export-subjects")
def export_subjects(
    out: Annotated[Path, typer.Argument(help="folder for <subject>/NN.png, prompts_and_classes.txt, ...")],
    subject: Annotated[list[str] | None, typer.Option("--subject", "-s", help="only these")] = None,
    subjects_file: SubjectsFile = None,
) -> None:
    """Export subjects in the DreamBench layout, with their evaluation prompts and a subjects file."""
    from steerguide.toyworld.subjects import export_subjects as export

    folder = export(out, subject or None, subjects_file)
    print(f"wrote {len(subject or []) or 'all'} subjects to {folder}")


@toyworld.command()
def render(
    out: Annotated[Path, typer.Argument(help="folder for NNNNN.png and prompts.jsonl")],
    n: Annotated[int, typer.Option(min=1, max=1_000_000, help="number of random scenes")] = 64,
    seed: Annotated[int, typer.Option()] = 0,
    caption: Annotated[str | None, typer.Option(help="render this caption (the rest at random)")] = None,
    subject: Annotated[str | None, typer.Option(help="render this subject in random contexts")] = None,
    subjects_file: SubjectsFile = None,
) -> None:
    """Render scenes of the world, with their captions in prompts.jsonl (the input format of `judge`)."""
    import numpy as np

    from steerguide.toyworld.render import render as render_image
    from steerguide.toyworld.subjects import get_subject
    from steerguide.toyworld.world import Spec, complete, parse_caption
    from steerguide.toyworld.world import caption as caption_of

    limits.seed("--seed", seed, n)
    subj = get_subject(subject, subjects_file) if subject else None
    stated = parse_caption(caption) if caption else Spec()
    if subj is not None:
        stated = stated.replace(shape=subj.class_noun, token=subj.token)
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # prompts.jsonl grows with the images (each line after its image): stopped at any point, it lists
    # exactly the images made, and the message counts its lines (a counter could lag a line behind)

    def kept() -> str:
        manifest.flush()
        lines = (out / "prompts.jsonl").read_text().splitlines()
        return (
            f"the first {len(lines)} images are in {out}, listed in prompts.jsonl; "
            "the same command renders them all again"
        )

    with _progress("render", n) as tick, (out / "prompts.jsonl").open("w") as manifest, _interrupted(kept):
        for i in range(n):
            spec = complete(stated.replace(pattern=stated.pattern or ("plain" if subj else None)), rng)
            img = subj.render(spec, seed + i) if subj else render_image(spec, seed + i)
            name = f"{i:05d}.png"
            save_image_atomic(img, out / name)
            manifest.write(json.dumps({"image": name, "prompt": caption or caption_of(spec)}) + "\n")
            manifest.flush()
            tick()
    print(f"wrote {n} images and prompts.jsonl to {out}")


def _load_images(folder: Path) -> dict[str, Image.Image]:
    if not folder.is_dir():
        raise UserError(f"not a folder of images: {folder}")
    out = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() in IMAGE_SUFFIXES:
            out[f.name] = open_rgb(f)
    if not out:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return out


@toyworld.command()
def judge(
    images: Annotated[Path, typer.Argument(help="folder of images")],
    prompt: Annotated[str | None, typer.Option(help="one prompt for every image")] = None,
    manifest: Annotated[Path | None, typer.Option(help="JSON lines {image, prompt}")] = None,
    subject: Annotated[str | None, typer.Option(help="also score fidelity to this subject")] = None,
    out: Annotated[Path | None, typer.Option(help="write the JSON lines here instead of stdout")] = None,
    subjects_file: SubjectsFile = None,
) -> None:
    """Judge images against prompts: text alignment (+ per attribute) and subject fidelity, as JSON lines."""
    from steerguide.toyworld.fidelity import FidelityJudge
    from steerguide.toyworld.judges import TextJudge
    from steerguide.toyworld.subjects import get_subject
    from steerguide.toyworld.world import parse_caption

    if out is not None:
        check_writable_file(out, "--out")
    if prompt is not None and manifest is not None:
        raise UserError("give --prompt (one prompt for every image) or --manifest, not both")
    subj = get_subject(subject, subjects_file) if subject else None
    loaded = _load_images(images)
    if prompt is not None:
        pairs = [(name, prompt) for name in loaded]
    else:
        manifest = manifest or images / "prompts.jsonl"
        if not manifest.exists():
            raise UserError(f"give --prompt or a manifest; {manifest} does not exist")
        try:
            rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
            pairs = [(r["image"], r["prompt"]) for r in rows]
        except OSError as e:  # a folder, unreadable
            raise UserError(f"cannot read the manifest {manifest}: {e.strerror or e}") from None
        except (ValueError, KeyError, TypeError):  # JSONDecodeError, UnicodeDecodeError: not a manifest
            raise UserError(f"{manifest}: every line must be JSON with 'image' and 'prompt'") from None
        missing = [name for name, _ in pairs if name not in loaded]
        if missing:
            raise UserError(f"{manifest} names images not in {images}: {', '.join(missing[:3])}")
    for _, p in pairs:
        parse_caption(p)  # fail on a bad prompt before any work
    tj = TextJudge()
    fid = None
    if subj is not None:
        fid = FidelityJudge().fidelity([loaded[name] for name, _ in pairs], subj.reference_images())
    lines = []
    with _progress("judge", len(pairs)) as tick:
        for k, (name, p) in enumerate(pairs):
            b = tj.breakdown(loaded[name], p)
            row = {"image": name, "prompt": p, "text_alignment": sum(b.values()) / len(b) if b else 1.0,
                   "attributes": b}
            if fid is not None:
                row["fidelity"] = fid[k]
                row["subject"] = subj.name
            lines.append(json.dumps(row))
            tick()
    text = "\n".join(lines) + "\n"
    if out is None:
        print(text, end="")
    else:
        out.write_text(text)
        print(f"wrote {len(lines)} lines to {out}")


def _table(title: str, values: dict[str, float]) -> None:
    print(f"{title}: " + "  ".join(f"{k} {v:.1%}" for k, v in values.items()))


@toyworld.command("check-judges")
def check_judges(
    n: Annotated[int, typer.Option(min=1, help="fresh held-out renders for the text judge")] = 500,
    vae: Annotated[bool, typer.Option(help="also measure on round trips through the base VAE")] = True,
) -> None:
    """Accuracy of the text judge per attribute and ROC-AUC of the fidelity judge, on fresh renders."""
    from steerguide.toyworld import checks
    from steerguide.toyworld.assets import load_base_pipeline
    from steerguide.toyworld.subjects import SUBJECTS

    v = load_base_pipeline().vae if vae else None
    total = (n + len(SUBJECTS)) * (2 if vae else 1)
    with _progress("check judges", total) as tick:
        r = checks.check_judges(n, v, tick)
    _table(f"text judge, {n} fresh renders", r["text_renders"])
    if vae:
        _table(f"text judge, {n} VAE round trips", r["text_vae"])
    for key, label in (("fidelity_auc_renders", "renders"), ("fidelity_auc_vae", "VAE round trips")):
        if key in r:
            aucs = r[key]
            print(f"fidelity ROC-AUC ({label}), subject vs other members of its class: min "
                  f"{min(aucs.values()):.4f} mean {sum(aucs.values()) / len(aucs):.4f}")
            print("  " + "  ".join(f"{k} {v:.4f}" for k, v in aucs.items()))


@toyworld.command("check-base")
def check_base(
    n: Annotated[int, typer.Option(min=1, help="number of grammar prompts")] = 128,
    guidance_scale: Annotated[float, typer.Option(help="CFG scale")] = 5.0,
    seed: Annotated[int, typer.Option()] = 0,
    model: Annotated[Path | None, typer.Option(help="pipeline folder (default: the shipped one)")] = None,
    grid: Annotated[Path | None, typer.Option(help="save the first 64 samples as a grid PNG")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full result as JSON")] = None,
    fidelity: Annotated[bool, typer.Option(help="also score class-only prompts against the subjects")] = True,
) -> None:
    """Attribute accuracy of the base model's CFG samples; fidelity of class-only prompts to subjects."""
    from steerguide.toyworld import checks
    from steerguide.toyworld.assets import load_base_pipeline

    limits.at_least("--guidance-scale", guidance_scale, 0)
    limits.seed("--seed", seed)
    if grid is not None:
        check_writable_file(grid, "--grid")
    if json_out is not None:
        check_writable_file(json_out, "--json")
    pipe = _load_pipeline(load_base_pipeline, model)
    t0 = time.time()
    with _progress("sample and judge", checks.check_base_ticks(n, fidelity)) as tick:
        r, _, images = checks.check_base(pipe, n, seed, guidance_scale, tick, fidelity)
    _table(f"base model, {n} prompts, CFG {guidance_scale}", r["accuracy"])
    if fidelity:
        print("fidelity to each subject (mean cosine): samples of 'a <class>' vs the subject's own renders")
    for name, f in r.get("fidelity", {}).items():
        print(f"  {name:14s} class prompt {f['class_prompt_samples']:.3f}   "
              f"subject {f['subject_heldout_renders']:.3f}   "
              f"ROC-AUC subject vs class samples {f['auc_subject_vs_class_samples']:.3f}")
    print(f"({time.time() - t0:.0f} s)")
    if grid is not None:
        save_grid(images[:64], grid)
        print(f"grid: {grid}")
    if json_out is not None:
        json_out.write_text(json.dumps(r, indent=1))


def _load_pipeline(load, model: Path | None):
    """The pipeline at `model` (default: the shipped one); a broken folder is one line, not a traceback."""
    try:
        return load(model)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 (e.g. a truncated safetensors file: SafetensorError)
        first = first_line(e)
        raise UserError(f"cannot load the pipeline at {model}: {type(e).__name__}: {first}") from None


def save_grid(images: list[Image.Image], path: Path, cols: int = 8, scale: int = 4) -> None:
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        sheet.paste(im, ((i % cols) * w, (i // cols) * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.resize((cols * w * scale, rows * h * scale), Image.NEAREST).save(path)


@toyworld.command("train-base")
def train_base(
    out: Annotated[Path, typer.Option(help="folder for the trained pipeline")],
    work: Annotated[Path, typer.Option(help="cache: dataset, VAE, latents, checkpoints")] = _DEFAULT_WORK,
    seed: Annotated[int, typer.Option(help="seed 0 reproduces the shipped model")] = 0,
    unet_steps: Annotated[int | None, typer.Option(min=1, help="UNet first phase length (default: as shipped)")] = None,
    refine_steps: Annotated[int | None, typer.Option(min=0, help="UNet refinement phase length (default: as shipped; 0: none)")] = None,
    stop_after: Annotated[int | None, typer.Option(min=1, help="stop each phase early at this step (default: run it all)")] = None,
) -> None:
    """Pretrain the base model on the world (never on subjects); seed 0 reproduces the shipped one."""
    from steerguide.toyworld.train_base import TrainConfig
    from steerguide.toyworld.train_base import train_base as run

    limits.seed("--seed", seed)
    cfg = TrainConfig(seed=seed)
    cfg.unet_steps = unet_steps or cfg.unet_steps
    cfg.refine_steps = cfg.refine_steps if refine_steps is None else refine_steps
    cfg.stop_after = stop_after or cfg.stop_after
    kept = (f"the finished stages are cached in {work} (the dataset, the VAE, latents, each UNet phase); "
            "the same command continues after the last of them")
    with _stages() as progress, _interrupted(lambda: kept):
        log = run(out, work, cfg, progress)
    print(f"saved {out}; timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in log["timings"].items()))


@toyworld.command("train-judge")
def train_judge(
    out: Annotated[Path, typer.Option(help="weights file (.safetensors)")],
    seed: Annotated[int, typer.Option(help="seed 0 reproduces the shipped fidelity judge")] = 0,
) -> None:
    """Train the fidelity judge's instance embedding (never on subjects)."""
    from steerguide.toyworld.fidelity import Embedder, save_embedder, train_embedder

    limits.seed("--seed", seed)
    check_writable_file(out, "--out")
    if out.exists() and not _holds_weights_of(out, Embedder()):
        raise UserError(f"--out {out} exists and is not fidelity judge weights; give a new file name")
    with _stages() as progress, _interrupted(lambda: f"nothing was saved to {out}; the same command starts again"):
        model = train_embedder(seed=seed, progress=progress)
    save_embedder(model, out)
    print(f"saved {out}")


@contextmanager
def _stages():
    """One bar per stage of a training run (elapsed, remaining, latest metrics); yields the
    `progress(stage, done, total, metrics)` callback that the training functions take."""
    with progress_bar(extra=("{task.fields[metrics]}",), stderr=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int, metrics: dict) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, metrics="")
            text = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            bar.update(tasks[stage], completed=done, metrics=text)

        yield progress


def _holds_weights_of(path: Path, model) -> bool:
    """Whether `path` is a safetensors file with exactly `model`'s parameters (ours to replace)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return set(f.keys()) == set(model.state_dict())
    except Exception:  # noqa: BLE001 (not safetensors at all)
        return False


@toyworld.command("check-personalization")
def check_personalization(
    folders: Annotated[list[Path], typer.Argument(help="trained toy personalizations (steerguide train --toy)")],
    subjects_file: SubjectsFile = None,
    seeds: Annotated[int, typer.Option(min=1, help="seeds per prompt (same for base and personalization)")] = 4,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the rows as JSON lines")] = None,
    cache: Annotated[Path | None, typer.Option(help="JSON file keeping the base model's scores across runs")] = None,
    steps: Annotated[int, typer.Option(min=1, hidden=True, help="sampling steps (tests only)")] = 20,
) -> None:
    """Is each personalization in the paper's regime? CFG w=5 on its subject's prompts: text >= 0.80 x the
    base model's, normalized fidelity (F - F_base) / (F_heldout - F_base) in [0.35, 0.85]."""
    from diffusers.utils import logging as dlogging

    from steerguide.toyworld.calibration import CRITERION, Measurer, subject_for

    subjects = [subject_for(f, subjects_file) for f in folders]  # every folder checked before any work
    if json_out is not None:
        check_writable_file(json_out, "--json")
    rows = []
    dlogging.disable_progress_bar()  # no "Loading pipeline components" bars under ours
    try:
        with _progress("sample and judge", None) as tick:
            measurer = Measurer(seeds, tick, steps, cache)
            for folder, subject in zip(folders, subjects, strict=True):
                rows.append(measurer.measure(folder, subject))
    finally:
        dlogging.enable_progress_bar()
    c = CRITERION
    print(f"criterion: CFG w=5, text >= {c.text_ratio_min:.2f} x base, normalized fidelity in "
          f"[{c.fidelity_min:.2f}, {c.fidelity_max:.2f}]; {seeds} seeds x the subject's prompts")
    print(f"{'subject':14s} {'method':16s} {'steps':>5s} {'text':>6s} {'base':>6s} {'ratio':>6s} "
          f"{'F':>6s} {'F_base':>6s} {'F_held':>6s} {'norm F':>6s}  verdict")
    for r in rows:
        verdict = "pass" if r["passed"] else f"miss ({r['why']})"
        print(f"{r['subject']:14s} {r['method']:16s} {r['steps']:5d} {r['text']:6.3f} {r['text_base']:6.3f} "
              f"{r['text_ratio']:6.3f} {r['fidelity']:6.3f} {r['fidelity_base']:6.3f} "
              f"{r['fidelity_heldout']:6.3f} {r['normalized_fidelity']:6.3f}  {verdict}")
    print(f"{sum(r['passed'] for r in rows)} of {len(rows)} pass")
    if json_out is not None:
        json_out.write_text("".join(json.dumps(r) + "\n" for r in rows))


@toyworld.command("ship-personalization")
def ship_personalization(
    subject: Annotated[str | None, typer.Argument(help="toy subject (default: the demo's)")] = None,
) -> None:
    """Train the demo's LoRA for a subject and ship it with the package (for maintainers: after a change
    of the recipe, base or version, `steerguide demo` trains again until this is rerun)."""
    import shutil
    import tempfile

    from steerguide.demo import default_subject, demo_config
    from steerguide.sweep import parse_config, run_sweep
    from steerguide.toyworld.assets import shipped_personalizations_path
    from steerguide.toyworld.subjects import get_subject

    name = get_subject(subject or default_subject()).name  # UserError when unknown
    config = parse_config(demo_config(name), source="steerguide toyworld ship-personalization")
    shipped = shipped_personalizations_path()
    check_writable(shipped, "the package's assets folder")
    with tempfile.TemporaryDirectory() as tmp, _interrupted(lambda: "nothing was shipped"):
        run_sweep(config, tmp, progress=True, train_only=True, shipped=False)
        (trained,) = (p for p in (Path(tmp) / "personalizations").iterdir() if p.is_dir())
        for old in shipped.glob(f"{name}-*"):
            shutil.rmtree(old)
        target = shipped / trained.name
        shutil.copytree(trained, target, ignore=shutil.ignore_patterns("checkpoints"))
    print(f"shipped {target} ({_dir_size(target) / 1e6:.1f} MB)")
