"""Text on the pictures and in the tables of the report and the demo: the font, word wrapping, the PNG
data URI of the HTML pages and how a mean with its confidence interval is written."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path


def font(size: int = 11):
    """DejaVu Sans from matplotlib (PIL's default font has no ω), else PIL's default."""
    from PIL import ImageFont

    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def wrap(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` characters, broken between words (a longer word has its own line)."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def png_data_uri(path_or_image) -> str:
    """A PNG file or a PIL image as a `data:` URI, so that an HTML page carries its pictures."""
    if isinstance(path_or_image, (str, Path)):
        data = Path(path_or_image).read_bytes()
    else:
        buf = io.BytesIO()
        path_or_image.save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def mean_ci_text(mean: float, ci: float, digits: int = 4) -> str:
    """"0.8123 ± 0.0100"; the mean alone where there is no interval (one value); "–" where there is no mean."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(ci) else f"{mean:.{digits}f} ± {ci:.{digits}f}"
