"""The femoral-head crop and the model input normalisation: one definition for every caller.

Training, the TorchServe handlers, the gateway and the evaluation all cut heads out of a
radiograph here. A crop is a square centred on the head's box with side = (longer box side) × s,
padded with black where it leaves the image, resized to the model's input size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from avn.intensity import standardised_ranks
from avn.pipeline.detect import HeadCandidate
from avn.pipeline.tracing import head_span

INPUT_SIZE = 224
SCALE_RANGE = (0.85, 1.05)  # the paper's resampling range of s
DEFAULT_RESAMPLES = 5  # N; typical heads get 2N
SERVING_SCALE = 0.95  # the middle of SCALE_RANGE: what a served crop uses


def crop_square(
    image: np.ndarray,
    box_xyxy: Sequence[float],
    scale: float = SERVING_SCALE,
    size: int = INPUT_SIZE,
) -> np.ndarray:
    """Square crop of ``image`` (H, W) around ``box_xyxy``, side = longer box side × ``scale``."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"degenerate box {box_xyxy}")
    if scale <= 0:
        raise ValueError("scale must be positive")
    side = max(x1 - x0, y1 - y0) * scale
    centre_x, centre_y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(round(centre_x - side / 2.0))
    top = int(round(centre_y - side / 2.0))
    extent = max(int(round(side)), 1)
    window = _padded_window(image, left, top, extent)
    interpolation = cv2.INTER_AREA if extent > size else cv2.INTER_LINEAR
    return cv2.resize(window, (size, size), interpolation=interpolation)


def _padded_window(image: np.ndarray, left: int, top: int, extent: int) -> np.ndarray:
    """image[top:top+extent, left:left+extent], with zeros where the window leaves the image."""
    height, width = image.shape[:2]
    window = np.zeros((extent, extent), dtype=image.dtype)
    src_x0, src_y0 = max(left, 0), max(top, 0)
    src_x1, src_y1 = min(left + extent, width), min(top + extent, height)
    if src_x1 > src_x0 and src_y1 > src_y0:
        window[src_y0 - top : src_y1 - top, src_x0 - left : src_x1 - left] = image[src_y0:src_y1, src_x0:src_x1]
    return window


def resample_scales(resamples: int = DEFAULT_RESAMPLES, typical: bool = False) -> np.ndarray:
    """The training values of s: N (2N for typical heads) spaced linearly over SCALE_RANGE."""
    if resamples < 1:
        raise ValueError("at least one resample")
    count = 2 * resamples if typical else resamples
    if count == 1:
        return np.array([SERVING_SCALE])
    return np.linspace(*SCALE_RANGE, count)


def normalise(crop: np.ndarray) -> np.ndarray:
    """Model input from a crop: grey levels by rank (:mod:`avn.intensity`), zero mean, unit variance.

    Ranks remove exposure, detector gain, bit depth and every vendor tone curve at once: none of
    them carries diagnostic information, and a real radiograph's curve is one the phantom never had.
    """
    return standardised_ranks(crop)


def crop_heads(
    pixels: np.ndarray, candidates: Sequence[HeadCandidate], input_sizes: Mapping[str, int], scale: float
) -> dict[str, np.ndarray]:
    """Per model, the (N, S, S) crops of every head at that model's input size (shared by size)."""
    sizes = sorted(set(input_sizes.values()))
    per_head = [_head_crops(pixels, candidate, index, sizes, scale) for index, candidate in enumerate(candidates)]
    by_size = {size: np.stack([crops[size] for crops in per_head]) for size in sizes}
    return {model: by_size[size] for model, size in input_sizes.items()}


def _head_crops(
    pixels: np.ndarray, candidate: HeadCandidate, index: int, sizes: Sequence[int], scale: float
) -> dict[int, np.ndarray]:
    """One head's crops at every size, as one trace span."""
    with head_span(index, sizes):
        return {size: crop_square(pixels, candidate.box, scale, size) for size in sizes}
