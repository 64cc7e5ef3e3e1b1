"""Training augmentation of head crops: small rotations and shifts, label-aware flips, and the
domain randomisation of processing and acquisition (:func:`avn.training.domain.randomise_photometry`).

A horizontal flip mirrors a right hip into a left one, so the side label is swapped with it;
view, stage and notes do not change under a flip.
"""

from __future__ import annotations

import cv2
import numpy as np

from avn.training.domain import CROP_PIXELS_PER_UNIT, randomise_photometry
from avn.vocabulary import SIDES, flip_side

MAX_ROTATION_DEG = 10.0
MAX_SHIFT = 0.06  # of the crop side
GAMMA_RANGE = (0.8, 1.25)


def augment_crop(crop: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """One augmented copy of a [0, 1] crop and whether it was flipped horizontally."""
    size = crop.shape[0]
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG), 1.0)
    matrix[:, 2] += rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2) * size
    out = cv2.warpAffine(crop.astype(np.float32), matrix, (size, size), borderMode=cv2.BORDER_REFLECT)
    flipped = bool(rng.random() < 0.5)
    if flipped:
        out = out[:, ::-1]
    out = np.clip(out, 0.0, 1.0) ** rng.uniform(*GAMMA_RANGE)
    out = randomise_photometry(out, rng, unit=size / CROP_PIXELS_PER_UNIT)
    return np.ascontiguousarray(out, dtype=np.float32), flipped


def flip_labels(task: str, labels: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Labels after the flips: side indices swap (left ↔ right), other tasks are unchanged."""
    if task != "side":
        return labels
    swapped = np.array([SIDES.index(flip_side(side)) for side in SIDES])
    return np.where(flipped, swapped[labels], labels)
