"""ComfyUI imported from a source folder inside this Python process: for the tests and the benchmark.

ComfyUI's own `main.py` does this setup for a user; a test or a benchmark that drives ComfyUI's modules
in-process has to do it itself, once, before the first `import comfy...`:
- the folder goes first on `sys.path` (ComfyUI is a folder, not an installed package);
- `--cpu` is set on ComfyUI's parsed arguments, as `main.py --cpu` would (a CPU build of torch cannot
  answer ComfyUI's CUDA queries otherwise);
- torchvision, when it cannot be imported, is replaced by `torchvision_stand_in` (see there).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from pathlib import Path

from steerguide.errors import UserError

ENV_VAR = "STEERGUIDE_COMFYUI"


def default_comfyui_dir() -> Path:
    """`$STEERGUIDE_COMFYUI`, else `../shared/comfyui` next to the repository (this checkout's layout)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).resolve()
    return (Path(__file__).resolve().parents[3] / ".." / "shared" / "comfyui").resolve()


def check_comfyui_dir(folder: str | Path) -> Path:
    folder = Path(folder).resolve()
    if not (folder / "comfy" / "samplers.py").is_file() or not (folder / "nodes.py").is_file():
        raise UserError(f"{folder} is not a ComfyUI folder (no comfy/samplers.py and nodes.py in it)")
    return folder


class _Missing(types.ModuleType):
    """A module whose every attribute says what is missing, at the moment it is used."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"torchvision is not installed ({self.__name__}.{name} was asked for); steerguide's ComfyUI "
            "harness stands in for it so that ComfyUI imports, and the model families that need it "
            "(Stable Cascade, Cosmos, ACE) do not run"
        )


def torchvision_stand_in() -> None:
    """Register an empty `torchvision` (and `torchvision.transforms`) in `sys.modules`, this process only.

    Why: `comfy/sd.py` imports torchvision at module level for model families steerguide does not use
    (Stable Cascade's and Cosmos' image coders); the SD 1.5 / SDXL / SD3 paths never touch it. The only
    torchvision wheel the package registry serves here is a CUDA build that fails to load against the
    CPU torch. A stand-in kept in this process (never installed, never on disk) lets ComfyUI import, and
    any use of torchvision fails loudly with a one-line ImportError instead of a wrong result. It has a
    module spec so that `importlib.util.find_spec("torchvision")` (transformers asks) does not raise.
    Does nothing when a real torchvision imports.
    """
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # noqa: BLE001 (absent, or the CUDA build's "operator torchvision::nms does not exist")
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    root = _Missing("torchvision")
    root.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    root.__path__ = []
    transforms = _Missing("torchvision.transforms")
    transforms.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", None)
    root.__dict__["transforms"] = transforms
    sys.modules["torchvision"] = root
    sys.modules["torchvision.transforms"] = transforms


def leave_comfyui(folder: str | Path) -> None:
    """Undo what `use_comfyui` did to this process's import state (its folder on sys.path, the stand-in),
    so that code run later in the process (other test files) sees neither. Imported comfy modules stay."""
    folder = Path(folder).resolve()
    # ComfyUI's folder, and folders inside it that its modules put on sys.path themselves
    sys.path[:] = [p for p in sys.path if not (p and (Path(p).resolve() == folder or folder in Path(p).resolve().parents))]
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        if isinstance(sys.modules[name], _Missing):
            del sys.modules[name]


def use_comfyui(folder: str | Path | None = None) -> Path:
    """Make `import comfy..., nodes` work in this process from ComfyUI's source folder; returns it."""
    folder = check_comfyui_dir(folder if folder is not None else default_comfyui_dir())
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    torchvision_stand_in()
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # as `main.py --cpu`: read when comfy.model_management is imported
    import comfy.model_management  # noqa: F401

    return folder


def run_comfyui_main(argv: list[str] | None = None) -> None:
    """`python -m steerguide.comfyui.harness COMFYUI_DIR [main.py's options]`: ComfyUI's own server,
    started by its `main.py` in this process, with the torchvision stand-in (for tests on CPU-only torch)."""
    import runpy

    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        raise SystemExit("usage: python -m steerguide.comfyui.harness COMFYUI_DIR [main.py options]")
    folder = check_comfyui_dir(args[0])
    torchvision_stand_in()
    sys.path.insert(0, str(folder))
    sys.argv = [str(folder / "main.py"), *args[1:]]
    runpy.run_path(str(folder / "main.py"), run_name="__main__")


if __name__ == "__main__":
    run_comfyui_main()
