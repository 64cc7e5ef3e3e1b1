"""Study: one subject's radiographs together — per side, the most severe stage seen on any of them."""

from __future__ import annotations

from collections.abc import Sequence

from avn.pipeline.results import Diagnosis, SideDiagnosis, SkippedRadiograph, StudyRadiograph
from avn.vocabulary import SIDES, collapse_of, most_severe, presence_of


def split_study_outcomes(
    outcomes: Sequence[Diagnosis | BaseException],
) -> tuple[list[StudyRadiograph], list[SkippedRadiograph]]:
    """Diagnosed radiographs and the ones skipped for having no femoral head, by request index."""
    radiographs, skipped = [], []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Diagnosis):
            radiographs.append(StudyRadiograph(index, outcome))
        else:
            skipped.append(SkippedRadiograph(index, str(outcome)))
    return radiographs, skipped


def aggregate_sides(radiographs: Sequence[StudyRadiograph]) -> tuple[SideDiagnosis, ...]:
    """Per side: the most severe stage on any radiograph; where it was seen most confidently."""
    sides = []
    for side in SIDES:
        seen = [(item.index, head) for item in radiographs for head in item.result.heads if head.side == side]
        if not seen:
            continue
        stage = most_severe([head.stage for _, head in seen])
        # The radiograph that shows that stage most confidently; the first one on ties.
        index, head = max(
            ((index, head) for index, head in seen if head.stage == stage),
            key=lambda item: (item[1].stage_probability, -item[0]),
        )
        sides.append(
            SideDiagnosis(
                side=side,
                stage=stage,
                presence=presence_of(stage),
                collapse=collapse_of(stage),
                probability=head.stage_probability,
                radiograph_index=index,
                radiograph_indices=tuple(sorted({index for index, _ in seen})),
            )
        )
    return tuple(sides)
