"""The metrics core (SPEC §3): one definition of every number the project reports.

Per-epoch validation during training, the ``metrics.json`` files and the evaluation reports all
call these functions, so a figure in a report means the same thing as the figure that picked the
checkpoint. scikit-learn computes the classification quantities; this module only chooses the
conventions around it and shapes the results.

Conventions, stated once:

- Every function returns plain Python (dict / list / float / int / str / None), ready for
  ``json.dumps``. Detection results are keyed by the IoU threshold as a float; ``json`` writes
  those keys as strings (``"0.5"``).
- Matching boxes: one greedy one-to-one rule (:func:`_one_to_one`). A (truth, prediction) pair is a
  candidate when its IoU is *strictly greater* than the threshold (as the paper); candidates are
  taken in priority order, skipping any whose truth or prediction is already taken. The priority is
  the largest IoU first for heads matched to the truth (:func:`match_boxes`, threshold
  ``MATCH_IOU`` = 0.5: the evaluation and ``avn realcheck``), and the detector's score first for
  detection counts (:func:`match_greedily`: a lower-scored duplicate of a found head is a false
  positive, whatever its overlap). Two femoral heads never overlap, so at IoU thresholds ≥ 0.5
  both priorities find the same number of matches on radiographs.
- Detection: predictions with ``score < score_threshold`` are ignored. Precision is 0 when nothing
  was predicted, recall is 0 when there is nothing to find, F1 is 0 when precision + recall is 0.
- Classification: a binary prediction is positive when ``score >= threshold``; a multi-class
  prediction is the argmax (the operating point). AUC is ``None`` when the truth holds only one
  class (a ROC curve needs both). Sensitivity is ``None`` without positives and specificity is
  ``None`` without negatives: they describe a population that is not there. Precision and F1 follow
  scikit-learn's ``zero_division=0``, as detection does. Macro AUCs average the classes whose AUC
  is defined. Classification metrics of zero samples raise ``ValueError``: nothing is defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

from avn.vocabulary import (
    COLLAPSE_CLASSES,
    COLLAPSE_INDEX_OF_STAGE,
    PRESENCE_CLASSES,
    PRESENCE_INDEX_OF_STAGE,
    PRESENT,
    STAGE_TO_COLLAPSE,
    STAGE_TO_PRESENCE,
    STAGES,
    class_indices_of_stages,
)

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7)  # Table II's detection thresholds
MATCH_IOU: float = 0.5  # a predicted head is the truth head it overlaps by more than this

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "MATCH_IOU",
    "box_iou",
    "match_boxes",
    "match_greedily",
    "detection_prf",
    "binary_metrics",
    "multiclass_metrics",
    "multilabel_metrics",
    "diagnosis_metrics",
    "group_stage_probabilities",
    "to_jsonable",
]


# --------------------------------------------------------------------------------------------
# JSON shaping


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy/torch values turned into plain Python; NaN and ±inf become ``None``.

    Strict JSON has no NaN, and a ``metrics.json`` must load in any consumer.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, Mapping):
        return {_jsonable_key(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # a torch tensor, without importing torch
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite_or_none(float(obj))
    raise TypeError(f"cannot make {type(obj).__name__} JSON-serialisable")


def _jsonable_key(key: Any) -> str | int | float | bool | None:
    if isinstance(key, np.generic):
        return key.item()
    return key


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _safe_ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, 0 when the denominator is 0 (the detection convention)."""
    return float(numerator / denominator) if denominator else 0.0


# --------------------------------------------------------------------------------------------
# Detection


def detection_prf(
    predictions: Sequence[tuple[Any, Any]],
    truths: Sequence[Any],
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    score_threshold: float = 0.5,
) -> dict[float, dict[str, float | int]]:
    """Precision, recall and F1 of FH detection at each IoU threshold, pooled over images.

    ``predictions[i]`` is ``(boxes (N, 4) xyxy, scores (N,))`` for image ``i`` and ``truths[i]`` its
    ground-truth boxes ``(M, 4)`` xyxy (numpy, torch or nested lists; empty is fine).
    Returns ``{threshold: {"precision", "recall", "f1", "tp", "fp", "fn"}}``.
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predicted images but {len(truths)} ground-truth images")
    counts = {float(t): [0, 0, 0] for t in iou_thresholds}
    for (boxes, scores), truth_boxes in zip(predictions, truths, strict=True):
        iou = _ranked_iou(boxes, scores, truth_boxes, score_threshold)
        for threshold, tally in counts.items():
            tp, fp, fn = match_greedily(iou, threshold)
            tally[0] += tp
            tally[1] += fp
            tally[2] += fn
    return {threshold: _prf_from_counts(*tally) for threshold, tally in counts.items()}


def _ranked_iou(boxes: Any, scores: Any, truth_boxes: Any, score_threshold: float) -> np.ndarray:
    """IoU (kept predictions × truths), rows ordered by descending score.

    IoU is computed in float64: in float32 an IoU of exactly 0.6 rounds above 0.6 and a boundary
    case would wrongly count as a hit under the strict ``>`` rule.
    """
    # Imported here so that report scripts that only need classification metrics skip torch.
    import torch

    pred = torch.as_tensor(boxes, dtype=torch.float64).detach().cpu().reshape(-1, 4)
    score = torch.as_tensor(scores, dtype=torch.float64).detach().cpu().reshape(-1)
    truth = torch.as_tensor(truth_boxes, dtype=torch.float64).detach().cpu().reshape(-1, 4)
    if pred.shape[0] != score.shape[0]:
        raise ValueError(f"{pred.shape[0]} boxes but {score.shape[0]} scores")
    kept = score >= score_threshold
    pred, score = pred[kept], score[kept]
    # Stable sort: equal scores keep the detector's order, so results are reproducible.
    order = torch.argsort(score, descending=True, stable=True)
    return box_iou(pred[order].numpy(), truth.numpy())


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes (float64)."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_boxes(truth_boxes: Any, predicted_boxes: Any, min_iou: float = MATCH_IOU) -> list[tuple[int, int]]:
    """Predicted heads matched to truth heads: sorted one-to-one (truth index, prediction index) pairs.

    The rule: every pair whose IoU is strictly above ``min_iou`` is a candidate; candidates are taken
    largest IoU first (on equal IoU, the later truth, then the later prediction, first), skipping a
    pair whose truth or prediction is already matched. A prediction matching nothing is left out.
    """
    iou = box_iou(truth_boxes, predicted_boxes)
    by_overlap = sorted(((iou[t, p], t, p) for t in range(iou.shape[0]) for p in range(iou.shape[1])), reverse=True)
    return sorted(_one_to_one((t, p) for overlap, t, p in by_overlap if overlap > min_iou))


def match_greedily(iou: np.ndarray, iou_threshold: float) -> tuple[int, int, int]:
    """(tp, fp, fn) of predictions (rows, best score first) against truths (columns).

    The matching rule of :func:`match_boxes` with the detector's score as the priority: each
    prediction in turn takes the unmatched truth it overlaps most (the first such truth on ties);
    it is a TP when that IoU is strictly above ``iou_threshold``. A truth is matched at most once,
    so a duplicate detection of an already-found head is a FP.
    """
    n_pred, n_truth = iou.shape
    by_score = (
        (p, t)
        for p, row in enumerate(iou)
        for t in sorted(range(n_truth), key=lambda column, row=row: (-row[column], column))
        if row[t] > iou_threshold
    )
    tp = len(_one_to_one(by_score))
    return tp, n_pred - tp, n_truth - tp


def _one_to_one(candidates: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The candidate pairs, in the order given, whose two members are both still unmatched."""
    used_first, used_second, pairs = set(), set(), []
    for first, second in candidates:
        if first in used_first or second in used_second:
            continue
        used_first.add(first)
        used_second.add(second)
        pairs.append((first, second))
    return pairs


def _prf_from_counts(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    precision = _safe_ratio(tp, tp + fp)
    recall = _safe_ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1), "tp": tp, "fp": fp, "fn": fn}


# --------------------------------------------------------------------------------------------
# Classification


def binary_metrics(
    y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float = 0.5
) -> dict[str, Any]:
    """Metrics of a binary classifier; ``scores`` are the positive class's probabilities.

    Returns ``{"auc", "sensitivity", "specificity", "precision", "f1", "accuracy", "support",
    "positives", "negatives", "tp", "fp", "tn", "fn", "threshold"}``.
    """
    truth = _as_binary_vector(y_true)
    score = np.asarray(scores, dtype=np.float64).reshape(-1)
    _check_same_length(truth, score)
    predicted = (score >= threshold).astype(int)
    return {
        "auc": _auc_or_none(truth, score),
        **_binary_operating_point(truth, predicted),
        "accuracy": float(accuracy_score(truth, predicted)),
        "support": int(truth.size),
        "threshold": float(threshold),
    }


def multiclass_metrics(y_true_idx: Sequence[int] | np.ndarray, probs: Any, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics of a C-class classifier at its argmax operating point.

    ``probs`` is (n, C) in the order of ``labels``. Per class, one-vs-rest AUC, sensitivity,
    specificity, precision, F1 and support. Returns ``{"labels", "per_class": {label: {...}},
    "macro_auc", "macro_f1", "weighted_f1", "accuracy", "confusion_matrix", "support"}``;
    ``confusion_matrix[i][j]`` counts truth ``labels[i]`` predicted as ``labels[j]``.
    """
    labels = list(labels)
    truth = np.asarray(y_true_idx, dtype=int).reshape(-1)
    prob = _as_score_matrix(probs, len(labels))
    _check_same_length(truth, prob)
    if truth.min() < 0 or truth.max() >= len(labels):
        raise ValueError(f"class indices must lie in [0, {len(labels)})")
    predicted = prob.argmax(axis=1)
    class_ids = list(range(len(labels)))
    one_vs_rest = multilabel_confusion_matrix(truth, predicted, labels=class_ids)
    per_class = {
        label: _one_vs_rest_metrics(truth == k, prob[:, k], predicted == k, one_vs_rest[k])
        for k, label in enumerate(labels)
    }
    return {
        "labels": labels,
        "per_class": per_class,
        "macro_auc": _mean_of_defined(m["auc"] for m in per_class.values()),
        "macro_f1": _averaged_f1(truth, predicted, class_ids, "macro"),
        "weighted_f1": _averaged_f1(truth, predicted, class_ids, "weighted"),
        "accuracy": float(accuracy_score(truth, predicted)),
        "confusion_matrix": confusion_matrix(truth, predicted, labels=class_ids).tolist(),
        "support": int(truth.size),
    }


def multilabel_metrics(y_true: Any, probs: Any, labels: Sequence[str], threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of a multi-label classifier (e.g. the 8 notes); a label is on when ``prob >= threshold``.

    ``y_true`` is (n, L) of 0/1 and ``probs`` (n, L), both in the order of ``labels``. Returns
    ``{"labels", "per_label": {label: {...}}, "macro_auc", "micro_auc", "macro_f1", "micro_f1",
    "support", "threshold"}``. ``macro_auc`` averages the labels whose AUC is defined (a label
    seen with one value only is skipped); ``micro_auc`` pools every (sample, label) pair.
    """
    labels = list(labels)
    truth = _as_score_matrix(y_true, len(labels))
    prob = _as_score_matrix(probs, len(labels))
    _check_same_length(truth, prob)
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("multi-label truth must be 0/1")
    truth = truth.astype(int)
    predicted = (prob >= threshold).astype(int)
    per_label_counts = multilabel_confusion_matrix(truth, predicted)
    per_label = {
        label: _one_vs_rest_metrics(truth[:, k] == 1, prob[:, k], predicted[:, k] == 1, per_label_counts[k])
        for k, label in enumerate(labels)
    }
    return {
        "labels": labels,
        "per_label": per_label,
        "macro_auc": _mean_of_defined(m["auc"] for m in per_label.values()),
        "micro_auc": _auc_or_none(truth.ravel(), prob.ravel()),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "support": int(truth.shape[0]),
        "threshold": float(threshold),
    }


def _one_vs_rest_metrics(
    is_class: np.ndarray, score: np.ndarray, predicted_class: np.ndarray, counts: np.ndarray
) -> dict[str, Any]:
    """One class against the rest; ``counts`` is sklearn's [[tn, fp], [fn, tp]] for that class."""
    truth = is_class.astype(int)
    predicted = predicted_class.astype(int)
    (tn, fp), (fn, tp) = counts
    return {
        "auc": _auc_or_none(truth, score),
        "sensitivity": _recall_or_none(truth, predicted, positive=1),
        "specificity": _recall_or_none(truth, predicted, positive=0),
        "precision": float(precision_score(truth, predicted, zero_division=0)),
        "f1": float(f1_score(truth, predicted, zero_division=0)),
        "support": int(truth.sum()),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }


def _binary_operating_point(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    tn, fp, fn, tp = confusion_matrix(truth, predicted, labels=[0, 1]).ravel()
    return {
        "sensitivity": _recall_or_none(truth, predicted, positive=1),
        "specificity": _recall_or_none(truth, predicted, positive=0),
        "precision": float(precision_score(truth, predicted, zero_division=0)),
        "f1": float(f1_score(truth, predicted, zero_division=0)),
        "positives": int(truth.sum()),
        "negatives": int(truth.size - truth.sum()),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }


def _auc_or_none(truth: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC, or ``None`` when the truth holds one class and the curve does not exist."""
    if np.unique(truth).size < 2:
        return None
    return _finite_or_none(float(roc_auc_score(truth, score)))


def _recall_or_none(truth: np.ndarray, predicted: np.ndarray, positive: int) -> float | None:
    """Recall of class ``positive`` (sensitivity for 1, specificity for 0); ``None`` if it is absent."""
    if not (truth == positive).any():
        return None
    return float(recall_score(truth, predicted, pos_label=positive, zero_division=0))


def _averaged_f1(truth: np.ndarray, predicted: np.ndarray, class_ids: list[int], average: str) -> float:
    return float(f1_score(truth, predicted, labels=class_ids, average=average, zero_division=0))


def _mean_of_defined(values: Any) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _as_binary_vector(y_true: Any) -> np.ndarray:
    truth = np.asarray(y_true).reshape(-1).astype(int)
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("binary truth must be 0/1")
    return truth


def _as_score_matrix(probs: Any, n_columns: int) -> np.ndarray:
    if hasattr(probs, "detach"):
        probs = probs.detach().cpu().numpy()
    prob = np.asarray(probs, dtype=np.float64)
    if prob.ndim != 2 or prob.shape[1] != n_columns:
        raise ValueError(f"expected scores of shape (n, {n_columns}), got {prob.shape}")
    return prob


def _check_same_length(truth: np.ndarray, scores: np.ndarray) -> None:
    """Same number of samples on both sides, and at least one: no metric is defined on nothing."""
    if truth.shape[0] == 0:
        raise ValueError("no samples to evaluate")
    if truth.shape[0] != scores.shape[0]:
        raise ValueError(f"{truth.shape[0]} truths but {scores.shape[0]} predictions")


# --------------------------------------------------------------------------------------------
# Diagnosis sub-tasks (SPEC §3): presence, collapse, staging from one 4-class output


def group_stage_probabilities(stage_probs: Any, stage_to_group: Mapping[str, str], groups: Sequence[str]) -> np.ndarray:
    """(n, len(groups)) probabilities: each group's column sums the stages that map to it.

    The grouping comes from the vocabulary, so a change there reaches every report. Stages are added
    in ``STAGES`` order, as :func:`avn.vocabulary.class_probability` adds them for a served head.
    """
    prob = _as_score_matrix(stage_probs, len(STAGES))
    grouped = np.zeros((prob.shape[0], len(groups)))
    for stage_index, group_index in enumerate(class_indices_of_stages(stage_to_group, groups)):
        grouped[:, group_index] += prob[:, stage_index]
    return grouped


def presence_probability(stage_probs: Any) -> np.ndarray:
    """(n,) P(presence): the mass of the diseased stages, 1 − P(absence) for a softmax output."""
    grouped = group_stage_probabilities(stage_probs, STAGE_TO_PRESENCE, PRESENCE_CLASSES)
    return grouped[:, PRESENCE_CLASSES.index(PRESENT)]


def collapse_probabilities(stage_probs: Any) -> np.ndarray:
    """(n, 3) probabilities of the collapse classes, in ``COLLAPSE_CLASSES`` order."""
    return group_stage_probabilities(stage_probs, STAGE_TO_COLLAPSE, COLLAPSE_CLASSES)


def diagnosis_metrics(stage_true: Sequence[str], stage_probs: Any) -> dict[str, Any]:
    """The three diagnostic sub-tasks of the paper from the staging model's output.

    ``stage_true`` holds stage names, ``stage_probs`` is (n, 4) in ``STAGES`` order. Returns
    ``{"presence": binary_metrics + "positive_label", "collapse": multiclass_metrics over
    COLLAPSE_CLASSES, "staging": multiclass_metrics over STAGES}``. The presence probability is
    P(presence) = sum of the diseased stages = 1 − P(absence) for a softmax output.
    """
    unknown = sorted(set(stage_true) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; expected {STAGES}")
    stage_index = np.array([STAGES.index(s) for s in stage_true], dtype=int)
    presence_index = np.array(PRESENCE_INDEX_OF_STAGE, dtype=int)[stage_index]
    collapse_index = np.array(COLLAPSE_INDEX_OF_STAGE, dtype=int)[stage_index]
    return {
        "presence": {**binary_metrics(presence_index, presence_probability(stage_probs)), "positive_label": PRESENT},
        "collapse": multiclass_metrics(collapse_index, collapse_probabilities(stage_probs), COLLAPSE_CLASSES),
        "staging": multiclass_metrics(stage_index, stage_probs, STAGES),
    }
