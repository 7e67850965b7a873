"""Opening the images users give (photos, references, generated folders): one line naming the file when
it is not an image steerguide can read, a decompression bomb included."""

from __future__ import annotations

import re
from pathlib import Path

from steerguide.errors import UserError


class TooLarge(UserError):
    """An image whose header promises more pixels than Pillow's decompression-bomb limit."""


def open_rgb(path: str | Path, what: str = "image", convert=None):
    """The image at `path` as RGB (`convert(image)`, else Pillow's RGB conversion), fully read.

    `UserError` naming the file when it is unreadable; `TooLarge` when its header promises more pixels
    than Pillow's decompression-bomb limit (twice `PIL.Image.MAX_IMAGE_PIXELS`; 30000×30000 would take
    2.7 GB as RGB), which Pillow raises as an exception of its own."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return convert(im) if convert is not None else im.convert("RGB")
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(e))
        size = f"{int(found[1]):,} pixels, more than the {int(found[2]):,}" if found else "more pixels than the"
        raise TooLarge(
            f"{what} {path} has {size} that steerguide opens (Pillow's decompression-bomb limit): "
            "give a smaller image"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read {what} {path}: {type(e).__name__}: not a readable image") from None
