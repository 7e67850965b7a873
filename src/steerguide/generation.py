"""`generate`: the CLI's job, images + run.json on disk.

Each batch's images are written as soon as they are made, and run.json (written before the first image,
rewritten after each batch) lists the images on disk. A rerun of the same command into the same folder
makes only the images missing; a different run into a folder that holds one is refused (or replaced
with `overwrite=True`). An interrupt therefore loses at most the batch in flight.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from steerguide.errors import UserError
from steerguide.files import versions
from steerguide.guidance import GuidanceConfig
from steerguide.progress import bar as progress_bar
from steerguide.run_folder import Refusals, RunFolder
from steerguide.sampling import sample

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


GENERATE_REFUSALS = Refusals(
    file="output folder {out} is not writable: it is a file",
    foreign=f"output folder {{out}} is not empty and holds no {RUN_JSON} of steerguide generate; "
    "give a new or empty folder",
    other="output folder {out} holds another run (different {different}); give a new "
    "folder, or --overwrite to replace it",
)


def run_folder(out: Path) -> RunFolder:
    """`out` as generate's run folder: run.json names the run; hidden files (the lock) do not count."""
    return RunFolder(out, RUN_JSON, ignore_hidden=True)


def _image_files(record: dict) -> list[str]:
    """The images (and a video's frame PNGs) an earlier run.json lists, by name in the folder."""
    names = []
    for entry in record.get("images", []):
        name = Path(str(entry.get("file", ""))).name if isinstance(entry, dict) else ""
        if name.endswith((".png", ".gif")):
            names.append(name)
        for frame in entry.get("frames", []) if isinstance(entry, dict) else []:
            if str(frame).endswith(".png"):
                names.append(Path(str(frame)).name)
    return names


def check_generate_out(out: Path, identity: dict, overwrite: bool) -> tuple[dict | None, list[Path]]:
    """Check `out` before any work. Returns the earlier record to continue (if the folder holds this run)
    and the files of another run to remove once the model has loaded (with `overwrite`).

    Refused: a file; a folder of another run (unless `overwrite`); a non-empty folder without run.json
    (not ours to add to)."""
    decision = run_folder(out).decide(GENERATE_REFUSALS, identity, keys=IDENTITY, overwrite=overwrite,
                                      files_of=_image_files)
    return decision.earlier, decision.replaced


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
    lock = run_folder(out).lock()
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
        folder.write_record(record)

    folder = run_folder(out)
    save()
    todo = [(p, i) for p in range(len(prompts)) for i in range(num_images) if (p, i) not in files]
    calls = _batches(todo, batch_size)
    with progress_bar(progress and bool(calls)) as bar:
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
                        folder.save_image(image, name)
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
