"""`steerguide comfyui install COMFYUI_DIR`: a `custom_nodes/steerguide` entry that imports this package.

The entry is laid out as ComfyUI's node registry expects a node package: an `__init__.py` exporting
NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS, and a `pyproject.toml` with `[project]` and
`[tool.comfy]`. It holds no code of ours: it imports `steerguide.comfyui.nodes` from the Python that runs
ComfyUI, so `pip install -U steerguide` updates the nodes, and the entry says so plainly when that Python
lacks steerguide. This module imports nothing from ComfyUI.
"""

from __future__ import annotations

from pathlib import Path

from steerguide.errors import UserError

MARKER = "written by `steerguide comfyui install`"

ENTRY = f'''"""steerguide's ComfyUI nodes: PG and AG guiders ({MARKER}; rerun it to update this folder)."""

try:
    from steerguide.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError as e:
    raise ImportError(
        "the steerguide nodes need the steerguide package in the Python that runs ComfyUI: "
        "pip install steerguide (" + str(e) + ")"
    ) from e

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
'''


def _pyproject(version: str) -> str:
    return f'''# {MARKER}
[project]
name = "steerguide"
description = "Personalization guidance (PG) and autoguidance for personalized models: one batched pass a step"
version = "{version}"
license = {{ text = "Apache-2.0" }}
dependencies = ["steerguide"]

[tool.comfy]
PublisherId = "steerguide"
DisplayName = "steerguide"
Icon = ""
'''


def install(comfyui_dir: str | Path) -> Path:
    """Write (or rewrite) `COMFYUI_DIR/custom_nodes/steerguide`; returns that folder."""
    from steerguide._version import __version__

    root = Path(comfyui_dir).expanduser()
    if not root.exists():
        raise UserError(f"ComfyUI folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"ComfyUI folder {root} is not a folder")
    if not (root / "custom_nodes").is_dir():  # ComfyUI's source folder, or a `--base-directory` one
        raise UserError(f"{root} is not a ComfyUI folder (no custom_nodes/ in it)")
    target = root / "custom_nodes" / "steerguide"
    entry = target / "__init__.py"
    if target.exists() and not (entry.is_file() and MARKER in entry.read_text(errors="replace")):
        raise UserError(f"{target} exists and was not written by steerguide: move it away first")
    try:
        target.mkdir(exist_ok=True)
        entry.write_text(ENTRY)
        (target / "pyproject.toml").write_text(_pyproject(__version__))
        (target / "requirements.txt").write_text("steerguide\n")
    except OSError as e:
        raise UserError(f"cannot write {target}: {e.strerror or e}") from None
    return target
