"""`import steerguide` and the CLI's start are light: torch, diffusers and gradio come when a command needs them."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types

import pytest

HEAVY = ["torch", "diffusers", "transformers", "peft", "accelerate", "gradio", "matplotlib"]

PACKAGES = ["steerguide", "steerguide.train", "steerguide.toyworld", "steerguide.weak"]


def _loaded_after(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
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


def test_a_command_quiets_the_libraries_before_it_runs():
    """The CLI no longer imports diffusers to quiet it at start: each command does, as it starts."""
    import typer
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from steerguide.cli import _quiet_before_commands

    seen = {}
    app = typer.Typer()
    sub = typer.Typer()

    @app.command("first")
    def first() -> None:
        seen["first"] = (
            diffusers_logging.is_progress_bar_enabled(),
            transformers_logging.is_progress_bar_enabled(),
        )

    @sub.command("second")
    def second() -> None:
        seen["second"] = diffusers_logging.is_progress_bar_enabled()

    app.add_typer(sub, name="group")
    before = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    try:
        for args in (["first"], ["group", "second"]):
            diffusers_logging.enable_progress_bar()
            transformers_logging.enable_progress_bar()
            command = typer.main.get_command(app)
            _quiet_before_commands(command)
            with command.make_context("steerguide", list(args)) as ctx:
                command.invoke(ctx)
    finally:
        for lib, enabled in zip((diffusers_logging, transformers_logging), before, strict=True):
            lib.enable_progress_bar() if enabled else lib.disable_progress_bar()
    assert seen == {"first": (False, False), "second": False}
