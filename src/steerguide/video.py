"""Videos written by `steerguide generate`: every frame as a PNG, and one animated GIF a person can open."""

from __future__ import annotations

import os
from pathlib import Path

FPS = 16  # Wan's frame rate


def save_video(frames: list, out: Path, stem: str, fps: int = FPS) -> dict:
    """Write `frames` (PIL images) as `stem-fNNN.png` and `stem.gif` (looping) in `out`, each file whole or
    not at all; returns the run.json entry's `file` (the GIF) and `frames` (the PNGs)."""
    from steerguide.files import save_image_atomic

    names = []
    for k, frame in enumerate(frames):
        names.append(f"{stem}-f{k:03d}.png")
        save_image_atomic(frame, out / names[-1])
    animation = out / f"{stem}.gif"
    tmp = animation.with_name(f".{animation.stem}.{os.getpid()}.tmp.gif")
    frames[0].save(tmp, save_all=True, append_images=list(frames[1:]), duration=round(1000 / fps), loop=0)
    os.replace(tmp, animation)
    return {"file": animation.name, "frames": names}
