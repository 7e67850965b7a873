"""The progress bar of long loops (sweeps, tuning): description, bar, done/total, elapsed and remaining;
and the console that the commands print their lines and tables with."""

from __future__ import annotations

# Columns of a console that is no terminal (a pipe, a file, a test's capture): there lines are read by
# programs, so they are never wrapped, whatever COLUMNS or the terminal the process started from says.
UNWRAPPED_WIDTH = 1000


def console(stderr: bool = False):
    """A rich console for the commands' lines and tables: as wide as the terminal when it is one, else
    `UNWRAPPED_WIDTH` (rich would take COLUMNS or an inherited terminal's width, even for a pipe: a
    report's table wrapped at 56 columns in a test worker)."""
    from rich.console import Console

    terminal = Console(stderr=stderr)
    return terminal if terminal.is_terminal else Console(stderr=stderr, width=UNWRAPPED_WIDTH)


def bar(enabled: bool = True, *, extra: tuple[str, ...] = (), transient: bool = False, stderr: bool = False):
    """A rich Progress with the house's columns: description, bar, done/total, the `extra` text columns (a
    unit, `"loss {task.fields[loss]}"`), elapsed, eta, remaining; drawing nothing unless `enabled`.
    `stderr`: on the commands' stderr console (see `console`), else rich's default one."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *map(TextColumn, extra)]
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    where = {"console": console(stderr=True)} if stderr else {}
    return Progress(*columns, disable=not enabled, transient=transient, **where)


def start_bar(enabled: bool, total: int, description: str, unit: str = ""):
    """A started rich bar and its task id, or None when disabled (rich is imported only when shown)."""
    if not enabled:
        return None
    started = bar(extra=(unit,) if unit else ())
    task = started.add_task(description, total=total)
    started.start()
    return started, task
