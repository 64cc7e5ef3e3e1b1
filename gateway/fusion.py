"""Prior fusion (SPEC §2.3) and the classes derived from a stage (SPEC §1).

Each note belongs to one stage (``NOTE_STAGE``). The notes model alone over-calls findings on heads
the staging model considers healthy, so at inference a note's probability is multiplied by the
staging model's probability of the note's stage::

    fused(note) = P_notes(note) × P_staging(NOTE_STAGE[note])

and a note passes when ``fused ≥ threshold`` (0.5 by default). Presence and collapse are derived
from the predicted stage through the vocabulary; their probability is the staging mass of every
stage that maps to the derived class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from avn.vocabulary import NOTE_STAGE, STAGE_TO_COLLAPSE, STAGE_TO_PRESENCE, collapse_of, presence_of
from gateway.results import DEFAULT_NOTE_THRESHOLD, Note


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


def presence_with_probability(stage: str, stage_probabilities: Mapping[str, float]) -> tuple[str, float]:
    """The presence class of ``stage`` and the staging mass of that class."""
    presence = presence_of(stage)
    return presence, _mass(presence, STAGE_TO_PRESENCE, stage_probabilities)


def collapse_with_probability(stage: str, stage_probabilities: Mapping[str, float]) -> tuple[str, float]:
    """The collapse class of ``stage`` and the staging mass of that class."""
    collapse = collapse_of(stage)
    return collapse, _mass(collapse, STAGE_TO_COLLAPSE, stage_probabilities)


def _mass(derived: str, mapping: Mapping[str, str], stage_probabilities: Mapping[str, float]) -> float:
    return float(sum(p for stage, p in stage_probabilities.items() if mapping[stage] == derived))
