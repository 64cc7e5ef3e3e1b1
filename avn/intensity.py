"""The one input normalisation: every model reads grey levels by rank, not by value.

Real radiographs reach us through many detectors, processing chains and exports: raw or
logarithmic output, vendor tone curves, window/level LUTs, 10- to 16-bit values, 8-bit JPEGs.
All of these keep the *order* of grey levels (bone brighter than muscle, muscle brighter than
gas) while changing the values almost arbitrarily. Histogram equalisation by rank maps any
strictly increasing tone curve to the same output, so the detector and the classifiers never see
the difference, and a model trained on the phantom's few processing chains meets no new
histogram on a hospital's radiograph.

:func:`detector_contrast` (ranks, then contrast-limited local equalisation) prepares the
detector's whole-radiograph input (:mod:`avn.models.detector`); :func:`standardised_ranks` the
classifiers' crops (:func:`avn.pipeline.crop.normalise`). Through those two, training, the TorchServe
handlers, the in-process backend and the evaluation all read the same numbers.
"""

from __future__ import annotations

import cv2
import numpy as np

# Contrast-limited local equalisation of the detector input: tiles of about 80 px of the 320-px
# input (a hip region), histogram bins clipped at twice their mean.
LOCAL_TILES = 4
LOCAL_CLIP = 2.0
_LEVELS = 65535

# A uniform variable on [0, 1] has mean 1/2 and standard deviation 1/sqrt(12).
UNIFORM_MEAN = 0.5
UNIFORM_STD = float(1.0 / np.sqrt(12.0))


def equalise(image: np.ndarray) -> np.ndarray:
    """Each pixel replaced by its mid-rank among the image's grey levels, in (0, 1), float32.

    Ties share one value (the middle of their ranks), so a flat image maps to 0.5 everywhere and
    the result does not depend on the order pixels are stored in. Invariant to any strictly
    increasing transform of ``image``.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.size == 0:
        return array.copy()
    values, inverse, counts = np.unique(array.ravel(), return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts  # pixels strictly darker than each grey level
    mid_rank = (below + 0.5 * counts) / float(array.size)
    return mid_rank[inverse].reshape(array.shape).astype(np.float32)


def standardised_ranks(image: np.ndarray) -> np.ndarray:
    """:func:`equalise`, then shifted and scaled to zero mean and unit variance (a classifier's input)."""
    return (equalise(image) - np.float32(UNIFORM_MEAN)) / np.float32(UNIFORM_STD)


def detector_contrast(image: np.ndarray) -> np.ndarray:
    """The detector's input normalisation: :func:`equalise`, then contrast-limited local equalisation.

    Global ranks spend much of the grey scale on large uniform areas (air beside a thin patient, a
    bright collimated border), which leaves the hip region faint; the local step (CLAHE) restores
    its contrast. It acts on the ranks, so the result stays blind to the input's tone curve.
    """
    ranks = equalise(image)
    if min(ranks.shape) < LOCAL_TILES:
        return ranks
    clahe = cv2.createCLAHE(clipLimit=LOCAL_CLIP, tileGridSize=(LOCAL_TILES, LOCAL_TILES))
    levels = clahe.apply(np.round(ranks * _LEVELS).astype(np.uint16))
    return levels.astype(np.float32) * np.float32(1.0 / _LEVELS)
