"""The detector's input geometry, without torch: a radiograph of any size is scaled by
``S / max(H, W)`` (aspect ratio kept) with area averaging, to lie at the top-left of the detector's
S×S input. The detector (:mod:`avn.models.detector`) uses it for training and inference; the
gateway uses it to shrink a radiograph *before* sending it to a model server, so that a 9-Mpx
float32 image (~36 MB) travels as the ~0.1 Mpx the detector reads anyway. The detector's own
resize of an already shrunk image is then the identity, and boxes map back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


class ImageShapeError(ValueError):
    """A radiograph that is not a non-empty 2-D grey image."""


@dataclass(frozen=True)
class LetterboxGeometry:
    """How an original (height, width) image maps onto the detector's S×S input."""

    original_height: int
    original_width: int
    input_size: int
    # Input pixels per original pixel along x and y: equal up to the rounding of the shorter side,
    # kept apart so that the mapping is exact.
    scale_x: float
    scale_y: float

    @property
    def original_size(self) -> tuple[int, int]:
        return self.original_height, self.original_width

    @property
    def scaled_size(self) -> tuple[int, int]:
        """(height, width) of the image content on the input canvas."""
        return round(self.original_height * self.scale_y), round(self.original_width * self.scale_x)

    def box_factors(self) -> np.ndarray:
        """(sx, sy, sx, sy): multiplies xyxy boxes from original into input coordinates."""
        return np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], dtype=np.float32)


def letterbox_geometry(height: int, width: int, input_size: int) -> LetterboxGeometry:
    """Scale factors that fit the longer image side into ``input_size``, keeping the aspect ratio."""
    if height <= 0 or width <= 0:
        raise ImageShapeError(f"empty image of size {height}x{width}")
    scale = input_size / max(height, width)
    scaled_height = max(1, min(input_size, round(height * scale)))
    scaled_width = max(1, min(input_size, round(width * scale)))
    return LetterboxGeometry(height, width, input_size, scaled_width / width, scaled_height / height)


def shrink_to_letterbox(image: np.ndarray, input_size: int) -> tuple[np.ndarray, LetterboxGeometry]:
    """A grey (H, W) image resized to its content size on the S×S input (float32), and the geometry."""
    array = np.asarray(image)
    if array.ndim != 2 or 0 in array.shape:
        raise ImageShapeError(f"expected a grey image shaped (H, W), got {array.shape}")
    geometry = letterbox_geometry(array.shape[0], array.shape[1], input_size)
    scaled_height, scaled_width = geometry.scaled_size
    # INTER_AREA averages the pixels it drops: no aliasing of noise and trabecular texture.
    resized = cv2.resize(
        array.astype(np.float32, copy=False), (scaled_width, scaled_height), interpolation=cv2.INTER_AREA
    )
    return resized, geometry


def boxes_from_letterbox(boxes_xyxy: np.ndarray, geometry: LetterboxGeometry) -> np.ndarray:
    """Boxes (K, 4) in input (shrunk-image) coordinates → original pixels, clipped to the image."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4) / geometry.box_factors()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, geometry.original_width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, geometry.original_height)
    return boxes
