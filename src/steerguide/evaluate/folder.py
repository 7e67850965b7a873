"""Scoring a folder of images generated elsewhere (`steerguide evaluate --images DIR`).

Each image needs its prompt, taken from the first of:
- `DIR/run.json`, as `steerguide generate` writes it (its "images": file and prompt of each);
- `DIR/metadata.jsonl`: lines {"file_name": "x.png", "prompt": "..."} (or "text", as in HF imagefolder);
- a sidecar `x.txt` next to `x.png`;
- `--prompt`, one prompt for every image.
Fidelity metrics need reference images: `--references DIR` (e.g. a DreamBench subject folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import IMAGE_SUFFIXES
from steerguide.evaluate.metrics import Metric, check_available
from steerguide.evaluate.report import mean_ci
from steerguide.progress import bar as progress_bar


@dataclass
class FolderScores:
    files: list[str]
    prompts: list[str | None]
    scores: dict[str, list[float]]  # metric name -> one value per file

    def summary(self) -> dict[str, tuple[float, float]]:
        return {m: mean_ci(v) for m, v in self.scores.items()}


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _run_json_prompts(folder: Path) -> dict[str, str]:
    """file -> prompt from the run.json that `steerguide generate` writes."""
    path = folder / "run.json"
    if not path.is_file():
        return {}
    try:
        images = json.loads(path.read_text())["images"]
        return {str(e["file"]): str(e["prompt"]) for e in images}
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a run.json of steerguide generate (no images with file and prompt)") from None


def open_image(path: Path):
    """An RGB image, or one line naming the file that is not one (or is a decompression bomb)."""
    from steerguide.images import open_rgb

    return open_rgb(path)


def folder_prompts(folder: Path, files: list[Path], prompt: str | None) -> list[str | None]:
    meta: dict[str, str] = _run_json_prompts(folder)
    metadata = folder / "metadata.jsonl"
    if metadata.is_file():
        for n, line in enumerate(metadata.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                meta[entry["file_name"]] = entry.get("prompt", entry.get("text"))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{metadata}:{n}: expected a JSON object with file_name and prompt") from None
    out = []
    for f in files:
        sidecar = f.with_suffix(".txt")
        if f.name in meta:
            out.append(meta[f.name])
        elif sidecar.is_file():
            out.append(sidecar.read_text().strip())
        else:
            out.append(prompt)
    return out


def score_folder(
    images: str | Path,
    metrics: list[Metric],
    references: str | Path | None = None,
    prompt: str | None = None,
    token: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> FolderScores:
    """Score every image in `images` with `metrics`. `token` (e.g. "sks") is removed from the prompts that
    CLIP-T reads, as the sweep does."""
    folder = Path(images)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"images folder {str(folder)!r} is not a folder (give the folder that holds the images)")
    if not folder.is_dir():
        raise UserError(f"images folder {str(folder)!r} does not exist")
    files = _image_files(folder)
    if not files:
        raise UserError(f"images folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    prompts = folder_prompts(folder, files, prompt)
    needs_text = [m for m in metrics if m.axis == "text"]
    if needs_text and any(p is None for p in prompts):
        missing = files[prompts.index(None)].name
        raise UserError(
            f"metric {needs_text[0].name} needs a prompt for {missing}: give --prompt, a run.json "
            "(from steerguide generate), a metadata.jsonl or a .txt sidecar"
        )
    refs = []
    if any(m.axis == "fidelity" for m in metrics):
        if references is None:
            raise UserError("fidelity metrics need --references DIR (the subject's real images)")
        ref_dir = Path(references)
        if not ref_dir.is_dir() or not _image_files(ref_dir):
            raise UserError(f"references folder {str(ref_dir)!r} does not exist or holds no images")
        refs = [open_image(p) for p in _image_files(ref_dir)]
    for p in files:  # every file readable before any scoring (a corrupt one fails the run, named)
        open_image(p)
    for m in metrics:  # a hub model offline and not cached: one line now, not after a minute of retries
        if getattr(m, "model_id", None):
            check_available("DINO" if m.name == "dino" else "CLIP", m.model_id, m.name)
    prepared = [m.prepare(refs) for m in metrics]
    scores: dict[str, list[float]] = {m.name: [] for m in metrics}
    with progress_bar(progress) as bar:
        task = bar.add_task("scoring", total=len(files))
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            ims = [open_image(p) for p in chunk]
            ps = prompts[start : start + batch_size]
            for m, prep in zip(metrics, prepared, strict=True):
                texts = [p if (m.raw_prompts or not token or p is None) else _strip(p, token) for p in ps]
                scores[m.name].extend(m.score(ims, texts, prep))
            bar.advance(task, len(chunk))
    return FolderScores([p.name for p in files], prompts, scores)


def _strip(prompt: str, token: str) -> str:
    import re

    return re.sub(rf"\s*\b{re.escape(token)}\b", "", prompt).strip()
