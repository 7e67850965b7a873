"""Sampling with guidance, and `generate`: images + run.json on disk.

Seeds mean what they mean to diffusers users: image i of a prompt starts from
`torch.Generator(device).manual_seed(seed + i)`, so `method="cfg"` gives what the stock pipeline gives
for that seed. Prompts are batched; each row keeps its own generator, so batching changes nothing.
"""

from __future__ import annotations

import inspect
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from steerguide.block import Counters
from steerguide.denoiser import guided
from steerguide.errors import UserError
from steerguide.files import FolderLock, check_writable, save_image_atomic, versions, write_json_atomic
from steerguide.guidance import GuidanceConfig
from steerguide.personalization import Personalization


@dataclass
class SampleResult:
    """`images[p][i]`: image i of prompt p. `counters`: denoiser work during sampling. `omegas[s]`: ω at
    sampling step s (None where step s was outside the guidance interval); `steps`: per step, its index,
    τ, ω and whether it was guided."""

    images: list[list[Image.Image]]
    counters: Counters
    seconds: float
    omegas: list[float | None] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)


def _progress(total: int, enabled: bool, description: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def sample(
    pipe,
    personalization: Personalization,
    config: GuidanceConfig,
    prompts: list[str],
    *,
    num_images: int = 1,
    seed: int = 0,
    steps: int = 30,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    distilled_guidance: float | None = None,
    num_frames: int | None = None,
    **pipe_kwargs: Any,
) -> SampleResult:
    """Sample `num_images` images for each prompt with the guidance of `config`.

    `config.scale` goes to the pipeline argument that is its real CFG scale (`true_cfg_scale` for Flux);
    `distilled_guidance` to a guidance embedding distilled into the model (Flux's `guidance_scale`; None:
    the pipeline's default). Video pipelines (Wan) make `num_frames` frames (None: the pipeline's
    default); `images[p][i]` is then the list of video i's frames. Extra keyword arguments go to the
    pipeline call unchanged (e.g. `callback_on_step_end`).
    """
    from steerguide import limits
    from steerguide.families import family_of

    family = family_of(pipe)
    limits.sampling_steps("steps", steps)
    if num_images < 1:
        raise UserError(f"num_images must be >= 1, got {num_images}")
    if not prompts:
        raise UserError("no prompts given")
    limits.seed("seed", seed, num_images)
    limits.image_side("--height", height)  # the messages of `generate` and the CLI
    limits.image_side("--width", width)
    call_params = inspect.signature(pipe.__call__).parameters
    if num_frames is not None and not family.video:
        raise UserError(f"--num-frames: {type(pipe).__name__} makes images, not videos")
    if family.video:
        for name, side in (("--height", height), ("--width", width)):
            if side is not None and side % 16:
                raise UserError(f"{name} must be a multiple of 16 for {type(pipe).__name__}, got {side}")
        if num_frames is not None:
            pipe_kwargs["num_frames"] = num_frames
        pipe_kwargs.setdefault("output_type", "pil")  # Wan's default is numpy arrays
    if family.scale_argument not in call_params:
        raise UserError(f"{type(pipe).__name__} takes no {family.scale_argument}: steerguide cannot guide it")
    if distilled_guidance is not None and family.distilled_argument is None:
        raise UserError(f"{type(pipe).__name__} has no distilled guidance embedding (--distilled-guidance)")
    if negative_prompt is None:
        negative_prompt = family.negative_prompt_default  # Flux: true CFG runs only with a negative prompt
    if config.guidance_rescale > 0:
        if "guidance_rescale" not in call_params:
            raise UserError(f"{type(pipe).__name__} does not support guidance_rescale")
        pipe_kwargs["guidance_rescale"] = config.guidance_rescale
    device = pipe._execution_device
    gen_device = "cpu" if device.type == "mps" else device
    rows = [(p, i) for p, _ in enumerate(prompts) for i in range(num_images)]
    batches = [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]
    images: list[list[Image.Image | None]] = [[None] * num_images for _ in prompts]
    pipe.set_progress_bar_config(disable=True)
    user_callback = pipe_kwargs.pop("callback_on_step_end", None)

    start = time.perf_counter()
    with (
        _progress(len(batches) * steps, progress, f"{config.method} w={config.scale:g}") as bar,
        guided(pipe, personalization, config) as wrapper,
    ):
        task = bar.add_task(
            f"sampling {len(rows)} images ({config.method}, w={config.scale:g})", total=len(batches) * steps
        )

        def on_step_end(pipeline, step, timestep, callback_kwargs):
            bar.advance(task)
            if user_callback is not None:
                return user_callback(pipeline, step, timestep, callback_kwargs)
            return callback_kwargs

        for batch in batches:
            generators = [torch.Generator(gen_device).manual_seed(seed + i) for _, i in batch]
            kwargs = dict(
                prompt=[prompts[p] for p, _ in batch],
                num_inference_steps=steps,
                **family.scale_kwargs(config.scale, distilled_guidance),
                generator=generators,
                height=height,
                width=width,
                callback_on_step_end=on_step_end,
                **pipe_kwargs,
            )
            if negative_prompt is not None:
                kwargs["negative_prompt"] = [negative_prompt] * len(batch)
            with torch.no_grad():
                result = pipe(**kwargs)
                out = result.frames if family.video else result.images
            for (p, i), image in zip(batch, out, strict=True):
                images[p][i] = image
    return SampleResult(
        images=images,
        counters=wrapper.counters,
        seconds=time.perf_counter() - start,
        omegas=wrapper.omegas,
        steps=[wrapper.steps[s] for s in sorted(wrapper.steps)],
    )


# -- generate: the CLI's job ----------------------------------------------------------------------------
#
# Each batch's images are written as soon as they are made, and run.json (written before the first image,
# rewritten after each batch) lists the images on disk. A rerun of the same command into the same folder
# makes only the images missing; a different run into a folder that holds one is refused (or replaced
# with `overwrite=True`). An interrupt therefore loses at most the batch in flight.

RUN_JSON = "run.json"
# What must match for a rerun to continue a folder: everything that decides the images' pixels.
IDENTITY = (
    "base", "personalization_path", "guidance", "prompts", "negative_prompt", "num_images", "seed",
    "steps", "height", "width", "device", "dtype", "scheduler_asked", "distilled_guidance", "num_frames",
)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def image_name(prompt_index: int, prompt: str, image_index: int) -> str:
    return f"{prompt_index:03d}-{_slug(prompt)}-{image_index:02d}.png"


def _batches(todo: list[tuple[int, int]], batch_size: int) -> list[list[tuple[int, int]]]:
    """Group pending (prompt, image) rows into calls of `sample`: one call covers some prompts × one run
    of consecutive image indices (their seeds), at most `batch_size` rows."""
    by_prompt: dict[int, list[int]] = {}
    for p, i in todo:
        by_prompt.setdefault(p, []).append(i)
    runs: dict[tuple[int, int], list[int]] = {}  # (first image, count) -> prompts
    for p, indices in by_prompt.items():
        start = prev = indices[0]
        for i in indices[1:] + [None]:
            if i is not None and i == prev + 1:
                prev = i
                continue
            for a in range(start, prev + 1, batch_size):  # a run longer than a batch: split it
                runs.setdefault((a, min(batch_size, prev + 1 - a)), []).append(p)
            if i is not None:
                start = prev = i
    calls = []
    for (a, n), prompts in runs.items():
        per_call = max(1, batch_size // n)
        for k in range(0, len(prompts), per_call):
            calls.append([(p, i) for p in prompts[k : k + per_call] for i in range(a, a + n)])
    return calls


def check_generate_out(out: Path, identity: dict, overwrite: bool) -> tuple[dict | None, list[Path]]:
    """Check `out` before any work. Returns the earlier record to continue (if the folder holds this run)
    and the files of another run to remove once the model has loaded (with `overwrite`).

    Refused: a file; a folder of another run (unless `overwrite`); a non-empty folder without run.json
    (not ours to add to)."""
    import json

    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} is not writable: it is a file")
    record_path = out / RUN_JSON
    visible = [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    if not visible:
        check_writable(out)
        return None, []
    if not record_path.is_file():
        raise UserError(
            f"output folder {out} is not empty and holds no {RUN_JSON} of steerguide generate; "
            "give a new or empty folder"
        )
    try:
        earlier = json.loads(record_path.read_text())
        different = [k for k in IDENTITY if earlier.get(k) != identity[k]]
    except (ValueError, AttributeError):
        earlier, different = {}, ["(unreadable run.json)"]
    if not different:
        check_writable(out)
        return earlier, []
    if not overwrite:
        raise UserError(
            f"output folder {out} holds another run (different {', '.join(different)}); give a new "
            "folder, or --overwrite to replace it"
        )
    replaced = [record_path]
    for entry in earlier.get("images", []) if isinstance(earlier, dict) else []:
        name = Path(str(entry.get("file", ""))).name if isinstance(entry, dict) else ""
        if name.endswith((".png", ".gif")):
            replaced.append(out / name)
        for frame in entry.get("frames", []) if isinstance(entry, dict) else []:  # a video's PNGs
            if str(frame).endswith(".png"):
                replaced.append(out / Path(str(frame)).name)
    check_writable(out)
    return None, replaced


def _remove_dead_temporaries(out: Path) -> None:
    """Half-written files of a killed run (`.NAME.PID.tmp.png`) whose process is gone."""
    import os

    for tmp in out.glob(".*.tmp*"):
        parts = tmp.name.split(".")
        pid = next((int(x) for x in parts if x.isdigit()), None)
        if pid is None or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _warn_truncated(pipe, prompts: list[str], negative_prompt: str | None) -> None:
    """Say once when a prompt is longer than the text encoder reads (diffusers truncates it quietly)."""
    import warnings

    from steerguide.errors import SteerguideWarning

    tokenizer = getattr(pipe, "tokenizer", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer is None or not limit or limit > 100_000:
        return
    texts = [*prompts, *([negative_prompt] if negative_prompt else [])]
    lengths = [len(tokenizer(t, truncation=False).input_ids) for t in texts]
    long = [(n, t) for n, t in zip(lengths, texts, strict=True) if n > limit]
    if long:
        n, text = max(long)
        warnings.warn(
            f"{len(long)} prompt(s) are longer than the text encoder's {limit} tokens and are cut there "
            f"(the longest, {n} tokens, starts {text[:40]!r})",
            SteerguideWarning,
            stacklevel=3,
        )


def generate(
    base: str,
    personalization: str | None,
    config: GuidanceConfig,
    prompts: list[str],
    out: Path,
    *,
    num_images: int = 1,
    seed: int = 0,
    steps: int = 30,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    scheduler: str | None = None,
    batch_size: int = 16,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    distilled_guidance: float | None = None,
    num_frames: int | None = None,
) -> dict:
    """Load, sample and write `out/<prompt#>-<slug>-<image#>.png` and `out/run.json`; returns the run record.

    Images are written as they are made; a rerun with the same arguments makes only the missing ones.
    `threads`: torch CPU threads (None: `limits.default_threads()` on the CPU)."""
    from steerguide import limits
    from steerguide.errors import Interrupted

    # Every number and path before any work.
    limits.sampling_steps("--steps", steps)
    limits.at_least("--num-images", num_images, 1)
    limits.at_least("--batch-size", batch_size, 1)
    limits.seed("--seed", seed, num_images)
    if num_frames is not None:
        limits.at_least("--num-frames", num_frames, 1)
    limits.threads(threads)
    limits.image_side("--height", height)
    limits.image_side("--width", width)
    if not prompts:
        raise UserError("no prompts given")
    if distilled_guidance is not None:
        limits.finite("--distilled-guidance", distilled_guidance)
    out = Path(out)
    identity = {
        "base": str(base),
        "personalization_path": str(personalization) if personalization else None,
        "guidance": config.describe(),
        "prompts": list(prompts),
        "negative_prompt": negative_prompt,
        "num_images": num_images,
        "seed": seed,
        "steps": steps,
        "height": height,
        "width": width,
        "device": device,
        "dtype": dtype,
        "scheduler_asked": scheduler,
        "distilled_guidance": distilled_guidance,
        "num_frames": num_frames,
    }
    created = not out.exists()
    check_generate_out(out, identity, overwrite)  # refused here, nothing is made
    # One run at a time writes into a folder: two started together would mix their images under one
    # run.json. Under the lock the folder is looked at again (the other run may have just written it).
    lock = FolderLock(out, "output folder")
    try:
        lock.acquire()
        earlier, replaced = check_generate_out(out, identity, overwrite)
        return _generate(base, personalization, config, prompts, out, identity, earlier, replaced, num_images,
                         seed, steps, height, width, negative_prompt, device, dtype, scheduler, batch_size,
                         threads, progress)
    except KeyboardInterrupt:
        kept = len(list(out.glob("*.png")))
        raise Interrupted(
            f"{kept} of {len(prompts) * num_images} images are in {out} (run.json lists them); "
            "run the same command again to make the rest"
        ) from None
    except BaseException:
        if lock.fd is not None:
            lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing was made: leave nothing behind
        raise
    finally:
        lock.release()


def _generate(base, personalization, config, prompts, out, identity, earlier, replaced, num_images, seed,
               steps, height, width, negative_prompt, device, dtype, scheduler, batch_size, threads,
               progress) -> dict:
    """`generate` once its arguments and `out` are checked (the same arguments, in order)."""
    from steerguide import limits
    from steerguide.families import family_of
    from steerguide.loading import load_personalization, load_pipeline

    if threads is None and device.startswith("cpu"):
        threads = limits.default_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    _remove_dead_temporaries(out)
    t0 = time.perf_counter()
    pipe = load_pipeline(base, device=device, dtype=dtype, scheduler=scheduler)
    family = family_of(pipe)
    distilled = identity["distilled_guidance"]
    if distilled is not None and family.distilled_argument is None:
        raise UserError(f"--distilled-guidance: {type(pipe).__name__} has no distilled guidance embedding")
    personal = load_personalization(pipe, personalization)
    if personal.kind == "none" and config.spec.uses_weak_model:
        raise UserError(f"--method {config.method} needs --personalization (without one, θ_pre = θ_ft)")
    native = _native_side(pipe)
    if native:
        for name, value in (("--height", height), ("--width", width)):
            if value is not None:
                limits.image_side_for_model(name, value, native)
        if (height is None) != (width is None):  # diffusers ignores one side given alone: fill the other
            height, width = height or native, width or native
    _warn_truncated(pipe, prompts, negative_prompt)
    for path in replaced:  # --overwrite: the other run goes once this one is sure to start
        path.unlink(missing_ok=True)
    seconds_loading = time.perf_counter() - t0

    files = {(e["prompt_index"], e["image_index"]): e for e in (earlier or {}).get("images", [])
             if (out / e["file"]).is_file()}
    totals = {"denoiser_calls": 0, "denoiser_rows": 0, "seconds_denoising": 0.0, "seconds_sampling": 0.0}
    if earlier:
        for k in totals:
            totals[k] += earlier.get(k, 0)
    record = {
        **identity,
        "personalization": personal.describe(),
        "omega_per_step": (earlier or {}).get("omega_per_step", []),
        "scheduler": type(pipe.scheduler).__name__,
        "pipeline": type(pipe).__name__,
        "family": family.name,
        "negative_prompt_used": negative_prompt if negative_prompt is not None else family.negative_prompt_default,
        "height_made": height or native or None,
        "width_made": width or native or None,
        "threads": threads,
        "complete": False,
        "seconds_loading": seconds_loading,
        "versions": versions(),
    }

    def save() -> None:
        record["images"] = [files[k] for k in sorted(files)]
        record.update(totals)
        write_json_atomic(out / RUN_JSON, record)

    save()
    todo = [(p, i) for p in range(len(prompts)) for i in range(num_images) if (p, i) not in files]
    calls = _batches(todo, batch_size)
    with _progress(len(calls) * steps, progress and bool(calls), "") as bar:
        task = bar.add_task(
            f"{len(todo)} images ({config.method}, w={config.scale:g})"
            + (f", {len(files)} already there" if files else ""),
            total=len(calls) * steps,
        )

        def on_step_end(pipeline, step, timestep, callback_kwargs):
            bar.advance(task)
            return callback_kwargs

        for call in calls:
            ps = list(dict.fromkeys(p for p, _ in call))
            first = min(i for _, i in call)
            per = len(call) // len(ps)
            result = sample(pipe, personal, config, [prompts[p] for p in ps], num_images=per, seed=seed + first,
                            steps=steps, height=height, width=width, negative_prompt=negative_prompt,
                            batch_size=len(call), progress=False, callback_on_step_end=on_step_end,
                            distilled_guidance=distilled, num_frames=identity["num_frames"])
            for k, p in enumerate(ps):
                for j, image in enumerate(result.images[k]):
                    i = first + j
                    name = image_name(p, prompts[p], i)
                    if family.video:  # the frames as PNGs and one animated GIF
                        from steerguide.video import save_video

                        entry = save_video(image, out, name.removesuffix(".png"))
                    else:
                        save_image_atomic(image, out / name)
                        entry = {"file": name}
                    files[(p, i)] = {**entry, "prompt": prompts[p], "prompt_index": p, "image_index": i,
                                     "seed": seed + i}
            for key, value in result.counters.as_dict().items():
                totals[key] += value
            totals["seconds_sampling"] += result.seconds
            record["omega_per_step"] = result.omegas
            save()
    record["complete"] = True
    save()
    return record


def _native_side(pipe) -> int | None:
    """The pixel side a pipeline makes by default, as its family knows it (None where it cannot tell)."""
    from steerguide.families import family_of

    return family_of(pipe).native_side(pipe)
