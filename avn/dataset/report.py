"""What ``avn data check`` found, and how it is shown: problems, counts, the text and JSON report.

``avn.dataset.check`` fills a ``CheckReport``; this module only holds and renders it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from avn.dataset.format import Dataset
from avn.vocabulary import SIDES, SPLITS, STAGES, VIEWS

ERROR = "error"
WARNING = "warning"

# The pseudo split under which counts list subjects that are in no split.
NO_SPLIT = "(none)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data set; ``str()`` gives the line the CLI prints."""

    file: str
    item: str
    field: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        return f"{self.file}: {self.item}: {self.field}: {self.message}"


@dataclass(frozen=True)
class GroupCounts:
    """What a group of radiographs (the whole set, or one split) holds."""

    subjects: int
    radiographs: int
    femoral_heads: int
    radiographs_by_view: dict[str, int]
    heads_by_stage: dict[str, int]
    heads_by_side: dict[str, int]


@dataclass(frozen=True)
class DatasetCounts:
    """The whole set, and each split (plus ``NO_SPLIT`` when some subjects are in none)."""

    total: GroupCounts
    by_split: dict[str, GroupCounts]

    @property
    def subjects(self) -> int:
        return self.total.subjects

    @property
    def radiographs_by_view(self) -> dict[str, int]:
        return self.total.radiographs_by_view

    @property
    def heads_by_stage(self) -> dict[str, int]:
        return self.total.heads_by_stage

    @property
    def heads_by_side(self) -> dict[str, int]:
        return self.total.heads_by_side


@dataclass(frozen=True)
class CheckReport:
    """The outcome of ``check_dataset``: problems (errors and warnings) and, when sound, counts."""

    folder: Path
    problems: list[Problem]
    counts: DatasetCounts | None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        """True when the set is usable: no errors (warnings allowed)."""
        return not self.errors

    def passes(self, strict: bool = False) -> bool:
        """``ok``, or with ``strict`` also free of warnings."""
        return not self.problems if strict else self.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "ok": self.ok,
            "problems": [asdict(p) for p in self.problems],
            "counts": asdict(self.counts) if self.counts else None,
        }

    def format_text(self) -> str:
        """The CLI report: a verdict, problems one per line, then the counts table."""
        lines = [f"Data set {self.folder}: {_verdict(self)}"]
        for title, problems in (("Errors", self.errors), ("Warnings", self.warnings)):
            if problems:
                lines += ["", f"{title} ({len(problems)}):"]
                lines += [f"  {problem}" for problem in problems]
        if self.counts is not None:
            lines += ["", _counts_table_text(self.counts)]
        return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# Counts


def counts_of(dataset: Dataset) -> DatasetCounts:
    """Subjects, radiographs and femoral heads of the whole set and of each split."""
    split_of = dataset.split_of_subject()
    groups: dict[str, list] = {name: [] for name in SPLITS}
    for image in dataset.images:
        groups.setdefault(split_of.get(image.subject_id, NO_SPLIT), []).append(image)
    heads = defaultdict(list)
    for annotation in dataset.annotations:
        heads[annotation.image_id].append(annotation)
    by_split = {name: _count_group(members, heads) for name, members in groups.items()}
    return DatasetCounts(total=_count_group(dataset.images, heads), by_split=by_split)


def _count_group(images: list, heads: dict[int, list]) -> GroupCounts:
    annotations = [a for image in images for a in heads.get(image.id, [])]
    return GroupCounts(
        subjects=len({image.subject_id for image in images}),
        radiographs=len(images),
        femoral_heads=len(annotations),
        radiographs_by_view=_tally((image.view for image in images), VIEWS),
        heads_by_stage=_tally((a.stage for a in annotations), STAGES),
        heads_by_side=_tally((a.side for a in annotations), SIDES),
    )


def _tally(values: Iterable[str], labels: tuple[str, ...]) -> dict[str, int]:
    counted = Counter(values)
    return {label: counted.get(label, 0) for label in labels}


# ---------------------------------------------------------------------------------------------
# Text rendering


def _verdict(report: CheckReport) -> str:
    errors, warnings = len(report.errors), len(report.warnings)
    if not errors and not warnings:
        return "OK, no problems found"
    parts = [f"{errors} error{'s' * (errors != 1)}", f"{warnings} warning{'s' * (warnings != 1)}"]
    status = "usable" if not errors else "NOT usable"
    return f"{status}; {', '.join(parts)}"


def _counts_table_text(counts: DatasetCounts) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Counts (radiographs by view, femoral heads by side and stage)", box=box.SIMPLE_HEAD)
    columns = ["split", "subjects", "radiographs", *VIEWS, "FHs", *SIDES, *STAGES]
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    rows = [(name, group) for name, group in counts.by_split.items()] + [("total", counts.total)]
    for name, group in rows:
        table.add_row(
            name,
            *map(str, (group.subjects, group.radiographs, *group.radiographs_by_view.values())),
            str(group.femoral_heads),
            *map(str, (*group.heads_by_side.values(), *group.heads_by_stage.values())),
        )
    buffer = StringIO()
    Console(file=buffer, width=120, color_system=None, force_terminal=False).print(table)
    return buffer.getvalue()
