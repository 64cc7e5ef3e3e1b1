"""Honest confidence: which heads the models answer for outside what they were trained on.

The models learnt femoral heads from the phantom. A head they should not be trusted on shows in
two measured ways (README, "Real radiographs"): the detector is unsure the box holds a femoral
head at all (its score), or the crop is unlike the training crops, which shows as the view and
side classifiers — certain on every training-like head — wavering between their two answers
(their mean top probability, a maximum-softmax out-of-distribution score). Such a head is
answered, but flagged ``low_confidence`` with the reasons, so that a hospital system can route
it to a human.
"""

from __future__ import annotations

import numpy as np

# Measured on the phantom T-set with the quick store: see the README table; below these a head
# is flagged. Kept here once; the gateway, the evaluation and the real check read them.
CONFIDENT_DETECTION_SCORE = 0.5
CONFIDENT_CLASSIFIER_PROBABILITY = 0.9


def classifier_certainty(view_row: np.ndarray, side_row: np.ndarray) -> float:
    """Mean top probability of the view and side models for one head (1 = certain)."""
    return float((np.max(view_row) + np.max(side_row)) / 2.0)


def low_confidence_reasons(detection_score: float, certainty: float, side_disagrees: bool = False) -> tuple[str, ...]:
    """Why a head's answer should be checked by a human; empty when it need not be.

    ``side_disagrees``: the side model called the other side than the head's place on the image.
    """
    reasons = []
    if detection_score < CONFIDENT_DETECTION_SCORE:
        reasons.append(f"detector score {detection_score:.2f} below {CONFIDENT_DETECTION_SCORE:.2f}")
    if certainty < CONFIDENT_CLASSIFIER_PROBABILITY:
        reasons.append(
            "crop unlike the training data: view/side certainty"
            f" {certainty:.2f} below {CONFIDENT_CLASSIFIER_PROBABILITY:.2f}"
        )
    if side_disagrees:
        reasons.append("the side model disagrees with the head's place on the image (check the side marker)")
    return tuple(reasons)
