"""Progress bars of the long-running commands (train, phantom, evaluate, ablation): one look, on
stderr so that a command's table on stdout stays clean to pipe."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class StageBars:
    """A reporter for ``(stage, done, total[, figures])`` callbacks: one bar per stage name, the
    latest figures (loss, validation score, …) in its description; ``total`` 0 means unknown."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int, figures: Mapping[str, float] | None = None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total or None)
        text = " ".join(f"{name} {value:.3f}" for name, value in (figures or {}).items())
        self.progress.update(
            self.tasks[stage], completed=done, total=total or None, description=f"{stage} {text}".strip()
        )
