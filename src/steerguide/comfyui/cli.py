"""`steerguide comfyui ...`: the ComfyUI node package's command."""

from __future__ import annotations

from pathlib import Path

import typer

comfyui_app = typer.Typer(help="ComfyUI: install steerguide's nodes into a ComfyUI folder.",
                          no_args_is_help=True, rich_markup_mode=None)


@comfyui_app.command("install")
def install_command(
    comfyui_dir: Path = typer.Argument(..., help="The ComfyUI folder (or its --base-directory): the one with custom_nodes/."),
) -> None:
    """Put a custom_nodes/steerguide entry into COMFYUI_DIR that imports this installed steerguide."""
    import sys

    from steerguide.comfyui.install import install

    target = install(comfyui_dir)
    print(f"installed steerguide's ComfyUI nodes: {target}")
    print(f"run ComfyUI with a Python that has steerguide installed (this one: {sys.executable})")


def register(app: typer.Typer) -> None:
    app.add_typer(comfyui_app, name="comfyui")
