"""One progress-bar style for every long loop (training, generation, scoring)."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(disable: bool = False) -> Progress:
    """A bar with count, a free-text `info` field (loss terms...), elapsed and remaining time; on stderr."""
    from rich.console import Console

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(file=sys.stderr), disable=disable,
    )
