"""What a training run folder (``avn train``) tells evaluation: its folds and their T-set figures.

``RUN_DIR/<task>/metrics.json`` records the seed, the profile, every fold's name, validation head
count and T-set metrics, and which fold was deployed. From that the deployed model's validation
subjects are rebuilt exactly (:func:`avn.training.folds.subject_folds` is deterministic in the
seed) — temperature scaling is fitted there, never on the T-set — and the per-fold T-set metrics
give confidence intervals over repeated cross-validation, as the paper reports them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from avn.dataset.format import Dataset
from avn.evaluation.bootstrap import DEFAULT_LEVEL
from avn.training.folds import subject_folds
from avn.training.profiles import get_profile

METRICS_FILE = "metrics.json"
_FOLD_NAME = re.compile(r"^r(\d+)f(\d+)$")


class RunInfoError(ValueError):
    """A run folder that does not say what evaluation needs (no metrics.json, other data, ...)."""


def read_task_metrics(run_dir: Path, task: str) -> dict[str, Any]:
    path = Path(run_dir) / task / METRICS_FILE
    if not path.is_file():
        raise RunInfoError(f"{path} is missing: is {run_dir} a folder written by `avn train`?")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class FoldLayout:
    folds: int  # k of the k-fold CV
    repeats: int
    names: tuple[str, ...]  # the folds trained, e.g. ("r0f0",) for the quick profile


def fold_layout(doc: dict[str, Any]) -> list[FoldLayout]:
    """The CV layouts that could have produced ``doc``'s fold names, most likely first.

    ``avn train`` records fold names but not k when only the first folds of each repeat were
    trained (the quick profile trains fold 0 of a 10-fold CV): k is then the profile's.
    """
    names = [fold["fold"] for fold in doc.get("folds", [])]
    parsed = [_FOLD_NAME.match(name) for name in names]
    if not names or not all(parsed):
        raise RunInfoError(f"unexpected fold names {names}")
    repeats = 1 + max(int(match.group(1)) for match in parsed)
    per_repeat = len(names) // repeats
    candidates = [per_repeat, get_profile(doc["profile"]).folds]
    return [FoldLayout(k, repeats, tuple(names)) for k in dict.fromkeys(candidates) if k >= 2]


def deployed_validation_subjects(doc: dict[str, Any], dataset: Dataset) -> tuple[str, tuple[str, ...]]:
    """(fold name, validation subjects) of the deployed model, checked against the recorded count
    of validation heads so that a wrong reconstruction cannot pass silently."""
    deployed = doc["deployed_fold"]
    recorded = next(fold for fold in doc["folds"] if fold["fold"] == deployed)
    heads_per_subject: dict[str, int] = {}
    subject_of_image = {image.id: image.subject_id for image in dataset.images}
    for annotation in dataset.annotations:
        subject = subject_of_image[annotation.image_id]
        heads_per_subject[subject] = heads_per_subject.get(subject, 0) + 1
    train_subjects = dataset.splits.get("train", [])
    for layout in fold_layout(doc):
        for fold in subject_folds(train_subjects, layout.folds, layout.repeats, int(doc["seed"])):
            if fold.name != deployed:
                continue
            heads = sum(heads_per_subject.get(subject, 0) for subject in fold.val_subjects)
            if "val_heads" not in recorded or heads == recorded["val_heads"]:
                return deployed, fold.val_subjects
    raise RunInfoError(
        f"cannot rebuild the validation subjects of fold {deployed}: no CV layout gives its "
        f"{recorded.get('val_heads')} validation heads (was the run trained on this data set?)"
    )


# ---------------------------------------------------------------- CIs over repeated CV


def repeats_of(doc: dict[str, Any]) -> int:
    names = [fold["fold"] for fold in doc.get("folds", [])]
    return len({_FOLD_NAME.match(name).group(1) for name in names if _FOLD_NAME.match(name)})


def interval_over_folds(values: list[float | None], level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """Mean of the fold models' T-set figure and its t-interval (mean ± t·SD/√n).

    The paper's CIs over 10 × 10 CV are symmetric about the mean (e.g. notes AUC 0.9637,
    0.9603–0.9671), i.e. an interval of the mean, not the 2.5/97.5 percentiles of the folds; the
    percentiles are kept beside it.
    """
    defined = np.array([value for value in values if value is not None and math.isfinite(value)], dtype=float)
    if defined.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0, "p2.5": None, "p97.5": None}
    mean = float(defined.mean())
    if defined.size == 1:
        return {"mean": mean, "low": None, "high": None, "n": 1, "p2.5": mean, "p97.5": mean}
    half = float(stats.t.ppf(0.5 + level / 2.0, defined.size - 1) * defined.std(ddof=1) / math.sqrt(defined.size))
    return {
        "mean": mean,
        "low": mean - half,
        "high": mean + half,
        "n": int(defined.size),
        "p2.5": float(np.percentile(defined, 2.5)),
        "p97.5": float(np.percentile(defined, 97.5)),
    }
