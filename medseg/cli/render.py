"""Rich rendering shared by the commands: the console, progress bars, metric cells.

Each command's own summary is printed by its module (``medseg.cli.data``, ``...batch``...);
only the command line imports these.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from medseg.progress import ProgressCallback

console = Console(stderr=False)


@contextmanager
def phase_progress() -> Iterator[ProgressCallback]:
    """A progress bar per phase; yields a callback ``(phase, done, total)``."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        yield update


def metric_cell(value: float | None, digits: int = 4) -> str:
    """A metric as the reports write it: empty when undefined (see medseg.evaluate.report)."""
    from medseg.evaluate.report import defined

    return "" if defined(value) is None else f"{value:.{digits}f}"
