"""``avn operating-points``: choose the staging model's operating points on its validation fold and
store them in its model card — for runs trained before training did it (avn/training/runner.py),
and after ``avn calibrate``, whose temperature changes every P(presence) and so the thresholds.

The validation fold of the deployed staging checkpoint is rebuilt from the run exactly as
``avn calibrate`` rebuilds it (:func:`avn.evaluation.temperature.validation_crops`); the model's
served probabilities (its temperature included) give P(presence) per head, and
:func:`avn.operating_points.choose_operating_points` the points. The card's version gets an
``-op<digest>`` suffix: other thresholds are other answers, and the gateway's result cache is keyed by
model version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avn.evaluation.temperature import validation_crops
from avn.models.checkpoint import load_checkpoint, rewrite_card
from avn.operating_points import ChosenPoint, choose_operating_points, is_present, presence_probability
from avn.training.classifier_loop import predict
from avn.training.runner import MODEL_FILE

TASK = "staging"
VERSION_SUFFIX = re.compile(r"-op[0-9a-f]{6}$")


def run_operating_points(
    run_dir: Path, data_dir: Path, write: bool = True, on_image: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Choose (and with ``write``, store) the operating points of ``run_dir``'s staging model.

    Returns the fold they were chosen on, the validation heads, the points and, when written, the
    checkpoint's new version.
    """
    fold, val = validation_crops(Path(run_dir), Path(data_dir), [TASK], on_image)[TASK]
    checkpoint = Path(run_dir) / TASK / MODEL_FILE
    model, _ = load_checkpoint(checkpoint, task=TASK)
    chosen = choose_operating_points(is_present(val.labels(TASK)), presence_probability(predict(model, val.crops)))
    result: dict[str, Any] = {"fold": fold, "heads": len(val), "points": {n: p.to_dict() for n, p in chosen.items()}}
    if write:
        result["version"] = store_operating_points(checkpoint, chosen)
    return result


def store_operating_points(checkpoint: Path, points: dict[str, ChosenPoint]) -> str:
    """Rewrite ``checkpoint`` with ``points`` in its card; returns its new version."""
    model, card = load_checkpoint(checkpoint, task=TASK)
    stored = {name: point.to_dict() for name, point in points.items()}
    digest = hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()[:6]
    version = f"{VERSION_SUFFIX.sub('', card.version)}-op{digest}"
    rewrite_card(checkpoint, model, card, version=version, operating_points=stored)
    return version
