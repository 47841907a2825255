"""One progress-bar style for every long loop (training, generation, scoring)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(disable: bool = False) -> Progress:
    """A bar with count, a free-text `info` field (loss terms...), elapsed and remaining time; on stderr."""
    from rich.console import Console

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(file=sys.stderr), disable=disable,
    )


@contextmanager
def counted(description: str, total: int, disable: bool = False):
    """A bar for `total` steps; yields `tick(info="")`, which advances it by one and shows `info`."""
    with progress_bar(disable) as bar:
        task = bar.add_task(description, total=total, info="")
        yield lambda info="": bar.update(task, advance=1, info=info)
