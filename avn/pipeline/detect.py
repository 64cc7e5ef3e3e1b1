"""Detect: the femoral-head candidates of a radiograph, and the heads kept for diagnosis.

The detector model (:mod:`avn.models.detector`) letterboxes every image to its small square input;
:func:`detect_heads` sends it the radiograph already shrunk that way (same shrink, so the same
answer) and maps the boxes back to the radiograph's pixels. :func:`choose_heads` keeps at most one
head per image half.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avn.letterbox import boxes_from_letterbox, letterbox_geometry, shrink_to_letterbox
from avn.pipeline.backend import Detections, ModelBackend
from avn.pipeline.decode import MIN_IMAGE_SIDE

MAX_HEADS = 2


@dataclass(frozen=True)
class HeadCandidate:
    """A detected femoral head kept for diagnosis."""

    box: tuple[float, float, float, float]  # xyxy, image pixels
    score: float

    @property
    def centre_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2.0


async def detect_heads(backend: ModelBackend, pixels: np.ndarray, detector_input_size: int) -> Detections:
    """Head candidates in the radiograph's pixels, from the radiograph shrunk to what the detector
    reads: the detector letterboxes every image to its small input anyway, so sending the full
    image only moves megabytes to a model server (a float32 3000×2500 radiograph is 30 MB) for it
    to average away. The shrink is the detector's own (:mod:`avn.letterbox`), so the answer is the
    same. An image no larger than the input, or so elongated that its shrunk short side would fall
    below what the model services accept, is sent whole."""
    height, width = pixels.shape
    scaled_height, scaled_width = letterbox_geometry(height, width, detector_input_size).scaled_size
    if max(height, width) <= detector_input_size or min(scaled_height, scaled_width) < MIN_IMAGE_SIDE:
        return await backend.detect(pixels)
    shrunk, geometry = shrink_to_letterbox(pixels, detector_input_size)
    detections = await backend.detect(shrunk)
    return Detections(boxes=boxes_from_letterbox(detections.boxes, geometry), scores=detections.scores)


def choose_heads(detections: Detections, image_width: int) -> list[HeadCandidate]:
    """At most one head per image half — the best-scoring candidate there — ordered left to right.

    A pelvic radiograph shows each femoral head on its own half, so a second candidate in the same
    half is a duplicate or a false positive. Degenerate or non-finite boxes are ignored.
    """
    best: dict[bool, HeadCandidate] = {}
    for box, score in zip(
        np.asarray(detections.boxes).reshape(-1, 4), np.asarray(detections.scores).reshape(-1), strict=False
    ):
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (np.isfinite([x0, y0, x1, y1, score]).all() and x1 > x0 and y1 > y0):
            continue
        candidate = HeadCandidate((x0, y0, x1, y1), float(score))
        on_left_half = candidate.centre_x < image_width / 2.0
        if on_left_half not in best or candidate.score > best[on_left_half].score:
            best[on_left_half] = candidate
    return sorted(best.values(), key=lambda candidate: candidate.centre_x)[:MAX_HEADS]
