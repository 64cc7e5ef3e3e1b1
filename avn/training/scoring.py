"""Which metrics describe each model, and the one number that picks its best checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np

from avn.metrics import binary_metrics, diagnosis_metrics, multilabel_metrics
from avn.models.classifier import CLASSIFIER_TASKS
from avn.vocabulary import STAGES


def task_metrics(task: str, labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Metrics of a classifier's probabilities against its labels (class indices or multi-hot)."""
    names = CLASSIFIER_TASKS[task]
    if task == "notes":
        return multilabel_metrics(labels, probs, names)
    if task == "staging":
        return diagnosis_metrics([STAGES[i] for i in labels], probs)
    # View and side are binary: the second label (FL, right) is the positive class.
    return {**binary_metrics(labels, probs[:, 1]), "positive": names[1]}


def selection_score(task: str, metrics: dict[str, Any]) -> float:
    """Higher is better: AUC for binary tasks, macro AUC for notes, macro F1 of the 4 stages."""
    if task == "staging":
        value = metrics["staging"]["macro_f1"]
    elif task == "notes":
        value = metrics["macro_auc"]
    else:
        value = metrics["auc"]
    return float(value) if value is not None else 0.0
