"""The `steerguide` command line: one typer app, each command a thin shell over a library function.

Every user-facing failure is one line on stderr and exit status 2 (`UserError`, or a usage error from
click); a traceback means a bug in steerguide.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer

from steerguide.errors import UserError

app = typer.Typer(
    name="steerguide",
    help="Personalization guidance (PG), CFG and autoguidance for personalized text-to-image diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Each sub-package owns its commands and registers them here; imports point from the app down.
_COMMAND_MODULES: list[str] = [
    "steerguide.train.cli",
    "steerguide.evaluate.cli",
    "steerguide.toyworld.cli",
]


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on `argv` and return its exit status (what `main` exits with)."""
    _register_commands()
    try:
        result = app(args=argv, prog_name="steerguide", standalone_mode=False)
    except UserError as e:
        print(f"steerguide: error: {e}", file=sys.stderr)
        return 2
    except click.exceptions.NoArgsIsHelpError as e:  # help text was requested implicitly
        print(e.format_message() if hasattr(e, "format_message") else str(e), file=sys.stderr)
        return 0
    except click.exceptions.UsageError as e:
        print(f"steerguide: error: {e.format_message()}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("steerguide: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
