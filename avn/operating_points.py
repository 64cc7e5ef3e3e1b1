"""Operating points: thresholds on the probability of AVN presence (presence = any stage but absence,
through :data:`avn.vocabulary.STAGE_TO_PRESENCE`), chosen on the validation fold of the deployed
staging model and stored in its model card.

* ``sensitive``: the highest threshold whose validation sensitivity is at least 0.95 — the most
  specific way to miss at most one AVN hip in twenty (a screening site);
* ``specific``: the lowest threshold whose validation specificity is at least 0.95 — the most
  sensitive way to raise at most one false alarm in twenty healthy hips;
* ``default``: the threshold of the largest Youden index (sensitivity + specificity − 1).

Each point keeps the sensitivity and specificity it had on validation, which every output reports
beside it. A head is called AVN-present at a point when P(presence) ≥ its threshold; its stage is
then the most probable of the present stages (else absence), so stage, presence and collapse never
contradict one another (:func:`served_stage_indices`). Without a point (a model card from before
operating points) the stage is the staging model's argmax, reported as the ``argmax`` point.
Training (:mod:`avn.training.runner`), ``avn operating-points`` (stores already built), the
pipeline and ``avn evaluate`` all use this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from avn.vocabulary import PRESENT, STAGE_TO_PRESENCE, STAGES

SENSITIVE, SPECIFIC, DEFAULT = "sensitive", "specific", "default"
OPERATING_POINTS: Final[tuple[str, ...]] = (DEFAULT, SENSITIVE, SPECIFIC)
ARGMAX: Final = "argmax"  # what a card without operating points serves
TARGET: Final = 0.95  # the sensitivity of "sensitive" and the specificity of "specific", on validation
PRESENT_COLUMNS: Final[tuple[int, ...]] = tuple(i for i, s in enumerate(STAGES) if STAGE_TO_PRESENCE[s] == PRESENT)
ABSENT_COLUMNS: Final[tuple[int, ...]] = tuple(i for i in range(len(STAGES)) if i not in PRESENT_COLUMNS)


class OperatingPointError(ValueError):
    """The validation fold cannot define the operating points (no AVN head or no healthy head in it)."""


@dataclass(frozen=True)
class ChosenPoint:
    """One operating point as the model card stores it."""

    threshold: float
    sensitivity: float  # on the validation fold
    specificity: float
    target: str  # how it was chosen, in words

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def presence_probability(stage_probabilities: np.ndarray) -> np.ndarray:
    """P(presence) per row of staging probabilities (columns in ``STAGES`` order)."""
    return np.asarray(stage_probabilities, dtype=np.float64)[..., list(PRESENT_COLUMNS)].sum(axis=-1)


def is_present(stage_indices: np.ndarray) -> np.ndarray:
    """Whether each stage (an index into ``STAGES``) means AVN present."""
    return np.isin(np.asarray(stage_indices), PRESENT_COLUMNS)


def served_stage_indices(stage_probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The served stage of each row, as an index into ``STAGES``.

    No threshold: the argmax (on a tie the earlier, less severe stage). With one: present when
    P(presence) ≥ threshold, and then the most probable present stage; else the most probable absent one.
    """
    probabilities = np.asarray(stage_probabilities, dtype=np.float64)
    if threshold is None:
        return probabilities.argmax(axis=-1)
    present = presence_probability(probabilities) >= threshold
    best_present = np.asarray(PRESENT_COLUMNS)[probabilities[..., list(PRESENT_COLUMNS)].argmax(axis=-1)]
    best_absent = np.asarray(ABSENT_COLUMNS)[probabilities[..., list(ABSENT_COLUMNS)].argmax(axis=-1)]
    return np.where(present, best_present, best_absent)


def sensitivity_specificity(truth_present: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of calling ``scores >= threshold`` present; NaN where a class is absent."""
    truth = np.asarray(truth_present, dtype=bool)
    called = np.asarray(scores, dtype=np.float64) >= threshold
    positives, negatives = truth.sum(), (~truth).sum()
    sensitivity = float((called & truth).sum() / positives) if positives else float("nan")
    specificity = float((~called & ~truth).sum() / negatives) if negatives else float("nan")
    return sensitivity, specificity


def choose_operating_points(
    truth_present: np.ndarray, scores: np.ndarray, target: float = TARGET
) -> dict[str, ChosenPoint]:
    """The three operating points of presence on validation (``scores``: P(presence) per head)."""
    truth = np.asarray(truth_present, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.all() or not truth.any():
        raise OperatingPointError(
            f"the validation fold has {int(truth.sum())} AVN heads and {int((~truth).sum())} healthy ones; "
            "operating points need both"
        )
    # Every distinct score is a threshold worth trying; above the highest score nothing is called.
    candidates = np.unique(np.concatenate([scores, [np.nextafter(scores.max(), np.inf)]]))
    figures = np.array([sensitivity_specificity(truth, scores, t) for t in candidates])
    sensitivity, specificity = figures[:, 0], figures[:, 1]

    def point(index: int, how: str) -> ChosenPoint:
        return ChosenPoint(float(candidates[index]), float(sensitivity[index]), float(specificity[index]), how)

    # The lowest threshold always reaches sensitivity 1 and the highest specificity 1: both exist.
    sensitive = int(np.flatnonzero(sensitivity >= target).max())
    specific = int(np.flatnonzero(specificity >= target).min())
    youden = int(np.argmax(sensitivity + specificity - 1.0))
    return {
        DEFAULT: point(youden, "largest Youden index on validation"),
        SENSITIVE: point(sensitive, f"highest threshold with validation sensitivity >= {target}"),
        SPECIFIC: point(specific, f"lowest threshold with validation specificity >= {target}"),
    }


def stored_points(card_points: Mapping[str, Mapping[str, Any]]) -> dict[str, ChosenPoint]:
    """The operating points of a model card's ``operating_points`` field."""
    return {
        name: ChosenPoint(**{k: point[k] for k in ChosenPoint.__dataclass_fields__})
        for name, point in card_points.items()
    }


def evaluation_section(
    stage_truth: np.ndarray, stage_probabilities: np.ndarray, card_points: Mapping
) -> dict[str, Any]:
    """``avn evaluate``'s operating-point table: per point of the staging card (and the argmax), its
    threshold, validation figures and the sensitivity and specificity it reaches on the evaluated heads."""
    truth = is_present(stage_truth)
    rows = []
    for name, point in [*stored_points(card_points).items(), (ARGMAX, None)]:
        served = served_stage_indices(stage_probabilities, None if point is None else point.threshold)
        called = is_present(served)
        rows.append(
            {
                "name": name,
                "threshold": None if point is None else point.threshold,
                "validation_sensitivity": None if point is None else point.sensitivity,
                "validation_specificity": None if point is None else point.specificity,
                "sensitivity": _share(called & truth, truth),
                "specificity": _share(~called & ~truth, ~truth),
                "positives": int(truth.sum()),
                "negatives": int((~truth).sum()),
            }
        )
    return {
        "title": "Operating points on AVN presence",
        "caption": "Thresholds on P(presence) chosen on the staging model's validation fold (sensitive: validation "
        f"sensitivity >= {TARGET}; specific: validation specificity >= {TARGET}; default: largest Youden index), "
        "and the sensitivity and specificity each reaches on the evaluated femoral heads; argmax is the staging "
        "model's most probable stage.",
        "rows": rows,
    }


def _share(hits: np.ndarray, of: np.ndarray) -> float | None:
    total = int(np.sum(of))
    return float(np.sum(hits) / total) if total else None
