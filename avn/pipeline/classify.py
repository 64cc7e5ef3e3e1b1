"""Classify: the four head classifiers (view, side, staging, notes), concurrently, on every head.

Each model is called once with all heads of the radiograph as one batch, through the
:class:`~avn.pipeline.backend.ModelBackend` (TorchServe or in-process); an answer of the wrong
shape is a bug in a model server and becomes :class:`~avn.pipeline.errors.Internal`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from avn.pipeline.backend import CLASSIFIER_MODELS, Classification, ModelBackend
from avn.pipeline.errors import Internal


@dataclass(frozen=True)
class HeadAnswers:
    """The four classifiers' answers for the same heads, rows in head order."""

    view: Classification
    side: Classification
    staging: Classification
    notes: Classification


async def classify_heads(backend: ModelBackend, crops: Mapping[str, np.ndarray], cam_stage: str | None) -> HeadAnswers:
    """The four classifiers, concurrently, each on all heads in one call."""
    view, side, staging, notes = await asyncio.gather(
        backend.classify("view", crops["view"]),
        backend.classify("side", crops["side"]),
        backend.classify("staging", crops["staging"], cam_stage=cam_stage),
        backend.classify("notes", crops["notes"]),
    )
    answers = HeadAnswers(view=view, side=side, staging=staging, notes=notes)
    count = len(crops["staging"])
    for name in CLASSIFIER_MODELS:
        check_answer(name, getattr(answers, name), count)
    return answers


def check_answer(model: str, answer: Classification, count: int) -> None:
    """A backend answer the pipeline can read: one row per head, one column per label."""
    shape = np.shape(answer.probabilities)
    if shape != (count, len(answer.labels)):
        raise Internal(
            f"the {model} model answered {shape} probabilities for {count} heads and {len(answer.labels)} labels"
        )
    if answer.cams is not None and len(answer.cams) != count:
        raise Internal(f"the {model} model answered {len(answer.cams)} activation maps for {count} heads")
