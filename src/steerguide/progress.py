"""The progress bar of long loops (sweeps, tuning): description, bar, done/total, elapsed and remaining."""

from __future__ import annotations


def start_bar(enabled: bool, total: int, description: str, unit: str = ""):
    """A started rich bar and its task id, or None when disabled (rich is imported only when shown)."""
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    bar = Progress(*columns, TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    task = bar.add_task(description, total=total)
    bar.start()
    return bar, task
