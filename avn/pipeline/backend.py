"""The one interface the pipeline calls models through, whatever runs them.

Two implementations: the in-process backend (the same PyTorch model code, no servers: embedded
mode, tests, benchmarks) and the TorchServe backend (TorchServe's gRPC inference API). Both take
and return the same plain arrays, so the pipeline does not know which one it talks to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from avn.operating_points import OPERATING_POINTS
from avn.pipeline.results import OperatingPoint, described

CLASSIFIER_MODELS = ("view", "side", "staging", "notes")
MODELS = ("detection", *CLASSIFIER_MODELS)


@dataclass(frozen=True)
class ModelInfo:
    """One model behind the service: its name, version, input size and labels."""

    name: str = described(f"One of {', '.join(MODELS)}.")
    version: str = described("The model card's version.")
    input_size: int = described("Crop side (classifiers) or detector input side, pixels.")
    labels: tuple[str, ...] = described("The labels the model outputs.")
    operating_points: tuple[OperatingPoint, ...] = described(
        "The staging model's operating points on presence (from its model card); empty for the others.", default=()
    )


def operating_points_of(card_points: Mapping[str, Mapping[str, Any]]) -> tuple[OperatingPoint, ...]:
    """A model card's ``operating_points`` as results, in :data:`OPERATING_POINTS` order."""
    return tuple(
        OperatingPoint(
            name, card_points[name]["threshold"], card_points[name]["sensitivity"], card_points[name]["specificity"]
        )
        for name in OPERATING_POINTS
        if name in card_points
    )


@dataclass(frozen=True)
class Detections:
    """Femoral-head candidates, best first, in the pixel coordinates of the image sent."""

    boxes: np.ndarray  # (K, 4) float32 xyxy
    scores: np.ndarray  # (K,) float32


@dataclass(frozen=True)
class Classification:
    """One classifier's answer for N crops, rows in crop order."""

    labels: tuple[str, ...]
    probabilities: np.ndarray  # (N, C): softmax, or sigmoid per label for the notes
    cams: np.ndarray | None = None  # (N, h, w) in [0, 1]: staging only
    cam_labels: tuple[str, ...] | None = None  # the stage each CAM shows


class ModelBackend(Protocol):
    """What the pipeline needs from the models. Implementations raise avn.pipeline.errors types."""

    async def detect(self, image: np.ndarray) -> Detections:
        """Heads on a grey (H, W) float32 [0, 1] radiograph."""

    async def classify(self, model: str, crops: np.ndarray, cam_stage: str | None = None) -> Classification:
        """``model`` in CLASSIFIER_MODELS on (N, S, S) float32 [0, 1] crops (S = its input size)."""

    async def models(self) -> list[ModelInfo]:
        """Name, version, input size and labels of every model (raises when one is not loaded)."""

    async def close(self) -> None:
        """Release connections or memory."""
