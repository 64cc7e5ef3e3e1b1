"""Prior fusion (SPEC §2.3) and the classes derived from a stage (SPEC §1).

Each note belongs to one stage (``NOTE_STAGE``). The notes model alone over-calls findings on heads
the staging model considers healthy, so at inference a note's probability is multiplied by the
staging model's probability of the note's stage::

    fused(note) = P_notes(note) × P_staging(NOTE_STAGE[note])

and a note passes when ``fused ≥ threshold`` (0.5 by default). The served stage follows the
request's operating point (:func:`avn.operating_points.served_stage_indices`, the one statement of
that rule, which the evaluation scores too): AVN is present when P(presence) reaches the point's
threshold, and the stage is then the most probable present stage; without operating points in the
staging card, the argmax. Presence and collapse are derived from the served stage through the
vocabulary; their probability is the staging mass of every stage that maps to the derived class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from avn.operating_points import ARGMAX, DEFAULT, served_stage_indices
from avn.pipeline.backend import Classification, ModelInfo
from avn.pipeline.classify import HeadAnswers
from avn.pipeline.confidence import classifier_certainty, low_confidence_reasons
from avn.pipeline.detect import HeadCandidate
from avn.pipeline.errors import Internal, InvalidArgument
from avn.pipeline.render import crop_window
from avn.pipeline.results import (
    DEFAULT_NOTE_THRESHOLD,
    Box,
    DiagnoseOptions,
    FemoralHead,
    LabelProbability,
    Note,
    OperatingPoint,
    View,
)
from avn.vocabulary import (
    NOTE_STAGE,
    STAGE_TO_COLLAPSE,
    STAGE_TO_PRESENCE,
    STAGES,
    VIEWS,
    class_probability,
    collapse_of,
    presence_of,
)


def fuse_note_probabilities(
    note_probabilities: np.ndarray,
    note_labels: Sequence[str],
    stage_probabilities: np.ndarray,
    stage_labels: Sequence[str],
) -> np.ndarray:
    """Fused probabilities (N, notes): each note's column times its stage's staging column."""
    note_probabilities = np.asarray(note_probabilities, dtype=np.float64)
    stage_probabilities = np.asarray(stage_probabilities, dtype=np.float64)
    stage_column = {label: index for index, label in enumerate(stage_labels)}
    prior = stage_probabilities[:, [stage_column[NOTE_STAGE[note]] for note in note_labels]]
    return note_probabilities * prior


def fused_notes(
    raw_row: np.ndarray,
    note_labels: Sequence[str],
    stage_row: np.ndarray,
    stage_labels: Sequence[str],
    threshold: float = DEFAULT_NOTE_THRESHOLD,
) -> tuple[Note, ...]:
    """Every note of one head, fused and judged against ``threshold``, in the model's order."""
    fused = fuse_note_probabilities(raw_row[np.newaxis], note_labels, stage_row[np.newaxis], stage_labels)[0]
    return tuple(
        Note(
            note=note,
            stage=NOTE_STAGE[note],
            raw_probability=float(raw),
            probability=float(value),
            passed=bool(value >= threshold),
        )
        for note, raw, value in zip(note_labels, raw_row, fused, strict=False)
    )


def served_stage(stage_probabilities: Mapping[str, float], threshold: float | None = None) -> str:
    """The served stage of one head, from its staging probabilities by stage name, at an operating
    point's presence ``threshold`` (None: the argmax)."""
    row = np.array([stage_probabilities[stage] for stage in STAGES])
    return STAGES[int(served_stage_indices(row, threshold))]


ARGMAX_POINT = OperatingPoint(ARGMAX, None, None, None)


def resolve_operating_point(staging: ModelInfo, name: str | None) -> OperatingPoint:
    """The operating point ``name`` of the staging model's card; None: its default, or the argmax
    when the card has none (a model trained before operating points)."""
    points = {point.name: point for point in staging.operating_points}
    if name is None:
        return points.get(DEFAULT, ARGMAX_POINT)
    if name == ARGMAX:
        return ARGMAX_POINT
    if name not in points:
        have = ", ".join(points) or "none"
        raise InvalidArgument(
            f"operating point {name!r} is not in the staging model's card (it has: {have}); "
            "`avn operating-points` computes them for a run"
        )
    return points[name]


def presence_with_probability(stage: str, stage_probabilities: Mapping[str, float]) -> tuple[str, float]:
    """The presence class of ``stage`` and the staging mass of that class."""
    presence = presence_of(stage)
    return presence, class_probability(presence, STAGE_TO_PRESENCE, stage_probabilities)


def collapse_with_probability(stage: str, stage_probabilities: Mapping[str, float]) -> tuple[str, float]:
    """The collapse class of ``stage`` and the staging mass of that class."""
    collapse = collapse_of(stage)
    return collapse, class_probability(collapse, STAGE_TO_COLLAPSE, stage_probabilities)


# SPEC §1, the radiological convention: the patient's right hip appears on the image's left.
SIDES_LEFT_TO_RIGHT_ON_IMAGE = ("right", "left")


def resolve_sides(side: Classification) -> list[tuple[str, float, bool]]:
    """(side, the side model's probability of that side, corrected) per head, heads left to right.

    Two heads: the layout decides, by the radiological convention — the head on the image's left is
    the patient's right. A crop shows far less than the whole radiograph, and a side model can learn
    a cue that real hips lack (the quick model answered the mirror side on every real pelvis of the
    real check, README "Real radiographs"); the layout of two femoral heads cannot be mirrored
    unless the image is. ``corrected`` marks a head the side model called the other way, which also
    flags it ``low_confidence`` (a mirrored image or a side model out of its depth).
    One head (a coned hip: no layout to read): the side model's answer.
    """
    probabilities = np.asarray(side.probabilities, dtype=np.float64)
    column = {label: index for index, label in enumerate(side.labels)}
    predicted = [side.labels[int(np.argmax(row))] for row in probabilities]
    sides = list(SIDES_LEFT_TO_RIGHT_ON_IMAGE) if len(predicted) == 2 else predicted
    return [
        (served, float(row[column[served]]), served != model_side)
        for served, model_side, row in zip(sides, predicted, probabilities, strict=True)
    ]


def radiograph_view(view: Classification) -> View:
    """The radiograph's view: the mean of its heads' view probabilities."""
    mean = np.asarray(view.probabilities, dtype=np.float64).mean(axis=0)
    probabilities = _in_order(view.labels, mean, VIEWS)
    best = max(probabilities, key=lambda item: item.probability)
    return View(view=best.label, probability=best.probability, probabilities=probabilities)


def interpret_heads(
    candidates: Sequence[HeadCandidate],
    answers: HeadAnswers,
    options: DiagnoseOptions,
    crop_scale: float,
    operating_point: OperatingPoint = ARGMAX_POINT,
) -> tuple[FemoralHead, ...]:
    """Every head's result except its CAM PNG (the output step adds it), called at ``operating_point``."""
    sides = resolve_sides(answers.side)
    staging, notes = answers.staging, answers.notes
    heads = []
    for index, candidate in enumerate(candidates):
        stage_probabilities = _in_order(staging.labels, staging.probabilities[index], STAGES)
        by_stage = {item.label: item.probability for item in stage_probabilities}
        stage = served_stage(by_stage, operating_point.threshold)
        presence, presence_probability = presence_with_probability(stage, by_stage)
        collapse, collapse_probability = collapse_with_probability(stage, by_stage)
        side, side_probability, side_corrected = sides[index]
        certainty = classifier_certainty(answers.view.probabilities[index], answers.side.probabilities[index])
        reasons = low_confidence_reasons(candidate.score, certainty, side_disagrees=side_corrected)
        heads.append(
            FemoralHead(
                box=Box(*candidate.box),
                score=candidate.score,
                side=side,
                side_probability=side_probability,
                side_corrected=side_corrected,
                stage_probabilities=stage_probabilities,
                stage=stage,
                stage_probability=by_stage[stage],
                presence=presence,
                presence_probability=presence_probability,
                collapse=collapse,
                collapse_probability=collapse_probability,
                notes=fused_notes(
                    notes.probabilities[index],
                    notes.labels,
                    staging.probabilities[index],
                    staging.labels,
                    options.note_threshold,
                ),
                cam_png=b"",
                cam_stage=staging.cam_labels[index] if staging.cam_labels else (options.cam_stage or stage),
                cam_box=crop_window(candidate.box, crop_scale),
                view_probabilities=_in_order(answers.view.labels, answers.view.probabilities[index], VIEWS),
                low_confidence=bool(reasons),
                low_confidence_reasons=reasons,
            )
        )
    return tuple(heads)


def _in_order(labels: Sequence[str], row: np.ndarray, vocabulary: Sequence[str]) -> tuple[LabelProbability, ...]:
    """A model's row as (label, probability) in vocabulary order, whatever order the model used."""
    by_label = dict(zip(labels, (float(p) for p in row), strict=False))
    if set(by_label) != set(vocabulary):
        raise Internal(f"a model answered labels {tuple(labels)}, expected {tuple(vocabulary)}")
    return tuple(LabelProbability(label, by_label[label]) for label in vocabulary)
