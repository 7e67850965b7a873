"""`import steerguide` and the CLI's start are light: torch, diffusers and gradio come when a command needs them."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import types

import pytest

HEAVY = ["torch", "diffusers", "transformers", "peft", "accelerate", "gradio", "matplotlib"]

QUIET_SETTINGS = [
    "TRANSFORMERS_VERBOSITY",
    "DIFFUSERS_VERBOSITY",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "TQDM_DISABLE",
]

PACKAGES = ["steerguide", "steerguide.train", "steerguide.toyworld", "steerguide.weak"]


def _loaded_after(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_steerguide_and_its_packages_loads_no_heavy_library():
    code = "import steerguide, steerguide.train, steerguide.toyworld, steerguide.weak, steerguide.ui"
    assert _loaded_after(code) == []


@pytest.mark.parametrize("args", [["--help"], ["ui", "--help"], ["train", "--help"], ["toyworld", "--help"]])
def test_cli_help_loads_no_heavy_library(args):
    code = (
        "import contextlib, io\n"
        "from steerguide.cli import run\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert run({args!r}) == 0\n"
    )
    assert _loaded_after(code) == []


def test_the_ui_page_is_built_before_torch_is_imported(tmp_path):
    """`steerguide ui` serves its page first; the model (torch, diffusers) loads behind it."""
    code = (
        "from steerguide.ui.studio import Studio\n"
        "from steerguide.ui.app import build_app\n"
        f"build_app(Studio(workdir={str(tmp_path)!r}))\n"
    )
    loaded = _loaded_after(code)
    assert "gradio" in loaded  # the page was built
    assert [m for m in loaded if m != "gradio"] == []


@pytest.mark.parametrize("package", PACKAGES)
def test_lazy_names_resolve_to_their_modules_objects(package):
    module = importlib.import_module(package)
    where = module._WHERE
    assert set(where) <= set(module.__all__)
    assert set(module.__all__) <= set(dir(module))
    for name in module.__all__:
        value = getattr(module, name)
        origin = where.get(name)
        if origin is not None:  # the very object its module defines, kept after the first lookup
            assert value is getattr(importlib.import_module(origin), name)
            assert vars(module)[name] is value
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


def test_from_import_of_the_public_names():
    from steerguide import GuidanceConfig, guided, sample
    from steerguide.denoiser import guided as defined_guided
    from steerguide.guidance import GuidanceConfig as defined_config
    from steerguide.sampling import sample as defined_sample

    assert (guided, sample, GuidanceConfig) == (defined_guided, defined_sample, defined_config)
    namespace: dict = {}
    exec("from steerguide import *", namespace)
    assert {"guided", "sample", "load_pipeline", "Personalization"} <= set(namespace)


def test_toyworld_render_stays_the_function_once_its_module_is_imported():
    # `render` is a function and a module of the same name: the module's import must not replace it
    code = (
        "import steerguide.toyworld.subjects, steerguide.toyworld.render\n"
        "from steerguide.toyworld import render, SUBJECTS\n"
        "import types; assert not isinstance(render, types.ModuleType), render\n"
    )
    assert "matplotlib" not in _loaded_after(code)
    from steerguide import toyworld

    assert not isinstance(toyworld.render, types.ModuleType)


QUIET_PROBE = """
import logging, sys
from steerguide.quiet import quiet_libraries as _quiet_libraries
{before}
_quiet_libraries()
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging
for lib in (diffusers_logging, transformers_logging):
    for _ in lib.tqdm(range(3), desc="Loading pipeline components"):
        pass
    lib.get_logger(lib.__name__.split(".")[0] + ".some_module").warning("library chatter")
print("done")
"""


@pytest.mark.parametrize("before", ["", "import diffusers, transformers"], ids=["later", "already"])
def test_the_cli_silences_library_bars_and_chatter_whenever_they_load(before):
    """`_quiet_libraries` (the CLI's start) imports neither library, yet their loading bars and warnings stay off."""
    probe = QUIET_PROBE.format(before=before)
    env = {k: v for k, v in os.environ.items() if k not in QUIET_SETTINGS}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert "Loading pipeline components" not in done.stderr
    assert "library chatter" not in done.stderr
    assert done.stderr.strip() == ""
