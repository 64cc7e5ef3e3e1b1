"""The clinical vocabulary (SPEC §1): every label set the project uses, defined once.

Training, TorchServe handlers, the gateway, the data-set checker, the phantom and the evaluation
all import these names; nothing else in the code base spells a label out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

VIEWS: Final[tuple[str, ...]] = ("AP", "FL")
VIEW_NAMES: Final[dict[str, str]] = {"AP": "anteroposterior", "FL": "frog-leg lateral"}

# The patient's side. Radiological convention puts the patient's right hip on the image's left.
SIDES: Final[tuple[str, ...]] = ("left", "right")

STAGES: Final[tuple[str, ...]] = ("absence", "II", "III", "IV")

# The two diagnoses derived from a stage (SPEC §1). These two mappings are the only statement of
# which stage belongs to which class: the served answer, the metrics, the evaluation tables and the
# readers' study all group stages through them (directly or through the helpers below).
PRESENCE_CLASSES: Final[tuple[str, ...]] = ("absence", "presence")
COLLAPSE_CLASSES: Final[tuple[str, ...]] = ("absence", "pre-collapse", "post-collapse")
PRESENT: Final[str] = "presence"  # the positive class of the presence task

STAGE_TO_PRESENCE: Final[dict[str, str]] = {
    "absence": "absence",
    "II": "presence",
    "III": "presence",
    "IV": "presence",
}
STAGE_TO_COLLAPSE: Final[dict[str, str]] = {
    "absence": "absence",
    "II": "pre-collapse",
    "III": "post-collapse",
    "IV": "post-collapse",
}


def class_indices_of_stages(stage_to_class: Mapping[str, str], classes: Sequence[str]) -> tuple[int, ...]:
    """Per stage, in ``STAGES`` order, the index of its class in ``classes`` (for array lookups)."""
    return tuple(classes.index(stage_to_class[stage]) for stage in STAGES)


# Stage index → class index, for vectorised code: ``np.array(PRESENCE_INDEX_OF_STAGE)[stage_indices]``.
PRESENCE_INDEX_OF_STAGE: Final[tuple[int, ...]] = class_indices_of_stages(STAGE_TO_PRESENCE, PRESENCE_CLASSES)
COLLAPSE_INDEX_OF_STAGE: Final[tuple[int, ...]] = class_indices_of_stages(STAGE_TO_COLLAPSE, COLLAPSE_CLASSES)

# Each note is a finding of exactly one stage; the order is the notes model's output order.
NOTE_STAGE: Final[dict[str, str]] = {
    "sclerosis": "II",
    "cystic change": "II",
    "crescent sign without collapse": "II",
    "subchondral flattening or collapse": "III",
    "FH deformation": "III",
    "flattening and deformation": "III",
    "FH and acetabular deformation": "IV",
    "joint space narrowing": "IV",
}
NOTES: Final[tuple[str, ...]] = tuple(NOTE_STAGE)

SPLITS: Final[tuple[str, ...]] = ("train", "test", "E1", "E2", "E3")


def notes_of_stage(stage: str) -> tuple[str, ...]:
    """The notes that belong to ``stage`` (empty for ``absence``)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return tuple(note for note, owner in NOTE_STAGE.items() if owner == stage)


def presence_of(stage: str) -> str:
    """The presence class (absence / presence) of a stage."""
    return STAGE_TO_PRESENCE[stage]


def collapse_of(stage: str) -> str:
    """The collapse class (absence / pre-collapse / post-collapse) of a stage."""
    return STAGE_TO_COLLAPSE[stage]


def has_avn(stage: str) -> bool:
    """Whether ``stage`` is a diseased one (its presence class is ``presence``)."""
    return presence_of(stage) == PRESENT


def class_probability(
    derived_class: str, stage_to_class: Mapping[str, str], stage_probabilities: Mapping[str, float]
) -> float:
    """The probability of a derived class: the staging mass of every stage that maps to it.

    Summed in the order of ``stage_probabilities`` (vocabulary order for a served head), as the
    vectorised :func:`avn.metrics.group_stage_probabilities` does, so both give the same bits.
    """
    return float(sum(p for stage, p in stage_probabilities.items() if stage_to_class[stage] == derived_class))


def most_severe(stages: list[str] | tuple[str, ...]) -> str:
    """The subject-level diagnosis of a side: the most severe stage among its radiographs."""
    if not stages:
        raise ValueError("no stages to aggregate")
    return max(stages, key=STAGES.index)


def flip_side(side: str) -> str:
    """The side label after a horizontal flip of the image."""
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; expected one of {SIDES}")
    return "right" if side == "left" else "left"


def image_half_of_side(side: str) -> str:
    """Where a patient's side appears on an unflipped radiograph: ``right`` hip on the image's left."""
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; expected one of {SIDES}")
    return "image-left" if side == "right" else "image-right"
