"""The paper's T-set tables (II–V), subject-level sensitivity, calibration and uncertainty, from the
pipeline's answers (:mod:`avn.evaluation.collect`), each figure with a 95% CI and the paper's value.

Point estimates come from the metrics core (:mod:`avn.metrics`, scikit-learn). Intervals:

- ``bootstrap``: percentile bootstrap over the evaluated units (heads; radiographs for detection;
  subjects for the subject level), ``resamples`` resamples drawn with ``seed``
  (:mod:`avn.evaluation.bootstrap`, vectorised); macro figures average the per-label resample
  vectors drawn with the same seed.
- ``repeats``: with a run trained with repeated CV (≥ 2 repeats), the interval of the mean over
  the fold models' T-set figures (``metrics.json``), as the paper; figures the fold documents do not
  hold (subject level, the served side, the pipeline's detection) stay bootstrapped.

Operating points are the service's: a head's stage is the served stage (the pipeline's own rule,
:func:`avn.pipeline.fuse.served_stage_indices`), presence and collapse derive from that stage through
the vocabulary's groupings, the side is the served side after the image-layout side rule, a note
passes when its fused probability is ≥ the service's default threshold (0.5).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avn import paper
from avn.evaluation import bootstrap as bs
from avn.evaluation.calibration import (
    DEFAULT_BINS,
    apply_temperature,
    bin_index,
    classifier_ece,
    confidence_and_correct,
    logits_from_probabilities,
    negative_log_likelihood,
    reliability_bins,
)
from avn.evaluation.collect import Collected, HeadTable, RadiographResult
from avn.evaluation.run_info import interval_over_folds
from avn.metrics import (
    DEFAULT_IOU_THRESHOLDS,
    binary_metrics,
    box_iou,
    collapse_probabilities,
    detection_prf,
    match_greedily,
    multiclass_metrics,
    multilabel_metrics,
    presence_probability,
)
from avn.pipeline.fuse import served_stage_indices
from avn.pipeline.results import DEFAULT_NOTE_THRESHOLD, StudyRadiograph
from avn.pipeline.study import aggregate_sides
from avn.vocabulary import (
    COLLAPSE_CLASSES,
    COLLAPSE_INDEX_OF_STAGE,
    NOTES,
    PRESENCE_INDEX_OF_STAGE,
    SIDES,
    STAGES,
    VIEWS,
    has_avn,
    most_severe,
)

PaperValue = tuple[float, float | None, float | None] | None
FoldFigure = Callable[[dict[str, Any]], Any]  # a fold document's T-set metrics → one number
METRIC_NAMES = {
    "auc": "AUC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "f1": "F1",
    "precision": "precision",
    "recall": "recall",
}
PRESENCE_INDEX = np.array(PRESENCE_INDEX_OF_STAGE)  # stage index → presence index (0 absence, 1 presence)
COLLAPSE_INDEX = np.array(COLLAPSE_INDEX_OF_STAGE)  # stage index → collapse index


@dataclass(frozen=True)
class IntervalSettings:
    resamples: int = bs.DEFAULT_RESAMPLES
    seed: int = 0
    level: float = bs.DEFAULT_LEVEL
    fold_docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # task → metrics.json, repeats mode only

    @property
    def repeats_mode(self) -> bool:
        return bool(self.fold_docs)


# ---------------------------------------------------------------- rows and tables


def make_row(
    key: str,
    label: str,
    estimate: float | None,
    interval: dict[str, Any] | None,
    paper_value: PaperValue = None,
    n: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One figure: ours with its interval, the paper's beside it (on real radiographs)."""
    row = {"key": key, "label": label, "estimate": estimate, "low": None, "high": None, "ci_method": None, "n": n}
    if interval:
        row.update(low=interval.get("low"), high=interval.get("high"), ci_method=interval.get("method"))
        if interval.get("fold_mean") is not None:
            row["fold_mean"] = interval["fold_mean"]
    row["paper"] = None if paper_value is None else dict(zip(("value", "low", "high"), paper_value, strict=False))
    row.update(extra)
    return row


class Intervals:
    """Bootstrap (or repeated-CV) intervals with one seed, resample count and level."""

    def __init__(self, settings: IntervalSettings) -> None:
        self.settings = settings

    def bootstrap(self, statistic: bs.RowStatistic, *arrays: np.ndarray) -> dict[str, Any]:
        s = self.settings
        with np.errstate(invalid="ignore", divide="ignore"):  # an undefined full-sample figure is None
            ci = bs.bootstrap_ci(statistic, *arrays, resamples=s.resamples, seed=s.seed, level=s.level)
        return {**ci.to_dict(), "method": "bootstrap"}

    def bootstrap_mean_of(
        self, statistic: bs.RowStatistic, columns: Sequence[tuple[np.ndarray, ...]]
    ) -> dict[str, Any]:
        """CI of the mean over columns (e.g. the 8 notes) of a statistic, on shared resamples."""
        s = self.settings
        vectors = [bs.bootstrap_values(statistic, *arrays, resamples=s.resamples, seed=s.seed) for arrays in columns]
        # nanmean warns on a resample where no label is defined: that resample is NaN, as intended.
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            values = np.nanmean(np.stack(vectors), axis=0)
            estimates = [statistic(*(array[None] for array in arrays))[0] for arrays in columns]
            estimate = float(np.nanmean(estimates)) if not np.all(np.isnan(estimates)) else None
        ci = bs.interval_from_values(values, estimate, resamples=s.resamples, seed=s.seed, level=s.level)
        return {**ci.to_dict(), "method": "bootstrap"}

    def choose(
        self, task: str, fold_figure: FoldFigure | None, fallback: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """Repeated-CV interval when the run has repeats and the fold documents hold the figure."""
        doc = self.settings.fold_docs.get(task)
        if doc is None or fold_figure is None:
            return fallback()
        values = [_safe(fold_figure, fold.get("test", {})) for fold in doc.get("folds", [])]
        summary = interval_over_folds(values, self.settings.level)
        if summary["n"] < 2:
            return fallback()
        return {
            "low": summary["low"],
            "high": summary["high"],
            "method": "repeats",
            "fold_mean": summary["mean"],
            "folds": summary["n"],
            "fold_percentiles": [summary["p2.5"], summary["p97.5"]],
        }


def _safe(figure: FoldFigure, test: dict[str, Any]) -> float | None:
    try:
        value = figure(test)
    except (KeyError, TypeError, IndexError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


# ---------------------------------------------------------------- Table II: detection


def detection_counts(
    boxes: np.ndarray, scores: np.ndarray, truth: np.ndarray, threshold: float
) -> tuple[int, int, int]:
    """(tp, fp, fn) of one radiograph, predictions best-score first (the metrics core's matching)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    iou = box_iou(np.asarray(boxes).reshape(-1, 4)[order], truth)
    return match_greedily(iou, threshold)


def _detector_answers(result: RadiographResult) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(result.detections.boxes).reshape(-1, 4), np.asarray(result.detections.scores).reshape(-1)


def _pipeline_answers(result: RadiographResult) -> tuple[np.ndarray, np.ndarray]:
    heads = result.predicted_heads
    return (
        np.array([h.box.as_tuple() for h in heads], dtype=np.float64).reshape(-1, 4),
        np.array([h.score for h in heads], dtype=np.float64),
    )


def _ratio_statistic(numerator: str, denominator: Sequence[str]) -> bs.RowStatistic:
    def statistic(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
        sums = {"tp": tp.sum(axis=1), "fp": fp.sum(axis=1), "fn": fn.sum(axis=1)}
        total = sum(sums[name] for name in denominator)
        return np.where(total > 0, sums[numerator] / np.maximum(total, 1), 0.0)

    return statistic


def _f1_statistic(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    tp, fp, fn = tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2.0 * tp / np.maximum(denominator, 1), 0.0)


DETECTION_STATISTICS = {
    "precision": _ratio_statistic("tp", ("tp", "fp")),
    "recall": _ratio_statistic("tp", ("tp", "fn")),
    "f1": _f1_statistic,
}


def detection_table(collected: Collected, intervals: Intervals) -> dict[str, Any]:
    """Precision, recall, F1 at IoU 0.5/0.6/0.7, pooled over radiographs; CIs resample radiographs.

    Two answers are scored: the detector's own (every box above its validated score cut: Table II's
    quantity) and the pipeline's heads (at most one per image half: what the service goes on with).
    """
    rows = []
    for source, answers in (("detector", _detector_answers), ("pipeline", _pipeline_answers)):
        predictions = [answers(result) for result in collected.radiographs]
        truths = [result.truth_boxes for result in collected.radiographs]
        pooled = detection_prf(predictions, truths, DEFAULT_IOU_THRESHOLDS, score_threshold=-np.inf)
        for threshold in DEFAULT_IOU_THRESHOLDS:
            counts = np.array(
                [detection_counts(b, s, t, threshold) for (b, s), t in zip(predictions, truths, strict=True)]
            ).reshape(-1, 3)
            figures = pooled[threshold]
            for metric, statistic in DETECTION_STATISTICS.items():
                fold_figure = (lambda test, t=threshold, m=metric: test[str(t)][m]) if source == "detector" else None
                interval = intervals.choose(
                    "detection", fold_figure, lambda st=statistic, c=counts: intervals.bootstrap(st, *c.T)
                )
                rows.append(
                    make_row(
                        f"detection.{source}.{metric}@{threshold}",
                        f"{source}: {METRIC_NAMES[metric]} @ IoU {threshold}",
                        figures[metric],
                        interval,
                        _paper_detection(source, threshold, metric),
                        len(truths),
                        source=source,
                        iou=threshold,
                        metric=metric,
                        tp=figures["tp"],
                        fp=figures["fp"],
                        fn=figures["fn"],
                    )
                )
    return {
        "id": "table_ii",
        "title": "Table II — femoral-head detection at IoU thresholds",
        "caption": "A detection is a true positive when its IoU with a not yet matched truth box is > the threshold. "
        "'detector': every box the SSD returns above its validated score cut; 'pipeline': the heads the "
        "service keeps (best per image half). CIs resample radiographs.",
        "rows": rows,
    }


def _paper_detection(source: str, threshold: float, metric: str) -> PaperValue:
    if source != "detector":
        return None
    return (paper.PAPER_TABLE_II[threshold][metric], None, None)


# ---------------------------------------------------------------- Table III: view, side, notes


def view_side_notes_table(heads: HeadTable, intervals: Intervals) -> dict[str, Any]:
    rows = []
    n = len(heads)
    for task, truth, score, predicted in (
        ("view", heads.view_truth, heads.view_probs[:, 1], heads.view_probs.argmax(axis=1)),
        ("side", heads.side_truth, heads.side_probs[:, 1], heads.side_served),
    ):
        positive = (VIEWS if task == "view" else SIDES)[1]

        # The fold documents score the side model alone; the served side also passes the
        # image-layout side rule, so its operating point is only bootstrapped.
        def at_point_figure(metric: str, task: str = task) -> FoldFigure | None:
            return (lambda t: t[metric]) if task == "view" else None

        auc = binary_metrics(truth, score)["auc"]
        at_point = binary_metrics(truth, predicted.astype(float))
        reference = paper.PAPER_TABLE_III[task]
        rows += [
            make_row(
                f"{task}.auc",
                f"{task} AUC (positive: {positive})",
                auc,
                intervals.choose(
                    task, lambda t: t["auc"], lambda t=truth, s=score: intervals.bootstrap(bs.auc_rows, t, s)
                ),
                reference["auc"],
                n,
            ),
            make_row(
                f"{task}.sensitivity",
                f"{task} sensitivity",
                at_point["sensitivity"],
                intervals.choose(
                    task,
                    at_point_figure("sensitivity"),
                    lambda t=truth, p=predicted: intervals.bootstrap(bs.sensitivity_rows, t, p),
                ),
                reference["sensitivity"],
                n,
            ),
            make_row(
                f"{task}.specificity",
                f"{task} specificity",
                at_point["specificity"],
                intervals.choose(
                    task,
                    at_point_figure("specificity"),
                    lambda t=truth, p=predicted: intervals.bootstrap(bs.specificity_rows, t, p),
                ),
                reference["specificity"],
                n,
            ),
        ]
    for variant, probabilities in (("fused", heads.notes_fused), ("raw", heads.notes_raw)):
        rows += notes_rows(variant, heads.notes_truth, probabilities, intervals)
    return {
        "id": "table_iii",
        "title": "Table III — exam view, side and clinical notes",
        "caption": "Per femoral head matched to a truth head. View and side: binary, positive class FL and right; "
        "the side's sensitivity/specificity are of the served side (after the image-layout side rule). "
        "Notes: the mean over the 8 notes of each one's AUC, sensitivity and specificity (notes absent "
        "from the split are left out); 'fused' is the served probability (note × P(its stage)), 'raw' "
        "the notes model alone. A note passes at ≥ 0.5.",
        "rows": rows,
    }


def notes_rows(
    variant: str, truth: np.ndarray, probabilities: np.ndarray, intervals: Intervals
) -> list[dict[str, Any]]:
    metrics = multilabel_metrics(truth, probabilities, NOTES)
    predicted = probabilities >= DEFAULT_NOTE_THRESHOLD
    columns = range(len(NOTES))
    reference = paper.PAPER_TABLE_III["notes"] if variant == "fused" else None
    fold_figures: dict[str, FoldFigure | None] = {
        "auc": (lambda t: t["macro_auc"]) if variant == "raw" else None,
        "sensitivity": (lambda t: _mean_defined(m["sensitivity"] for m in t["per_label"].values()))
        if variant == "raw"
        else None,
        "specificity": (lambda t: _mean_defined(m["specificity"] for m in t["per_label"].values()))
        if variant == "raw"
        else None,
    }
    estimates = {
        "auc": metrics["macro_auc"],
        "sensitivity": _mean_defined(m["sensitivity"] for m in metrics["per_label"].values()),
        "specificity": _mean_defined(m["specificity"] for m in metrics["per_label"].values()),
    }
    statistics = {
        "auc": (bs.auc_rows, [(truth[:, k], probabilities[:, k]) for k in columns]),
        "sensitivity": (bs.sensitivity_rows, [(truth[:, k], predicted[:, k]) for k in columns]),
        "specificity": (bs.specificity_rows, [(truth[:, k], predicted[:, k]) for k in columns]),
    }
    rows = []
    for metric, (statistic, arrays) in statistics.items():
        interval = intervals.choose(
            "notes", fold_figures[metric], lambda s=statistic, a=arrays: intervals.bootstrap_mean_of(s, a)
        )
        rows.append(
            make_row(
                f"notes.{variant}.{metric}",
                f"notes ({variant}): mean {METRIC_NAMES[metric]}",
                estimates[metric],
                interval,
                None if reference is None else reference[metric],
                len(truth),
            )
        )
    return rows


def _mean_defined(values: Any) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


# ---------------------------------------------------------------- Tables IV and V: diagnosis


@dataclass(frozen=True)
class DiagnosisArrays:
    """The three sub-tasks from one staging output, at the service's operating point."""

    stage_truth: np.ndarray
    stage_probs: np.ndarray
    stage_served: np.ndarray  # the pipeline's served stage (index into STAGES)

    @classmethod
    def of(cls, heads: HeadTable) -> DiagnosisArrays:
        return cls(heads.stage_truth, heads.stage_probs, served_stage_indices(heads.stage_probs))

    @property
    def presence_truth(self) -> np.ndarray:
        return PRESENCE_INDEX[self.stage_truth]

    @property
    def presence_score(self) -> np.ndarray:
        return presence_probability(self.stage_probs)

    @property
    def presence_served(self) -> np.ndarray:
        return PRESENCE_INDEX[self.stage_served]

    @property
    def collapse_truth(self) -> np.ndarray:
        return COLLAPSE_INDEX[self.stage_truth]

    @property
    def collapse_probs(self) -> np.ndarray:
        return collapse_probabilities(self.stage_probs)

    @property
    def collapse_served(self) -> np.ndarray:
        return COLLAPSE_INDEX[self.stage_served]


def served_multiclass(
    truth: np.ndarray, probs: np.ndarray, served: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """The metrics core's multi-class figures with AUCs from ``probs`` and everything at the operating
    point from the served class (a one-hot score makes the core's argmax the served answer)."""
    ranked = multiclass_metrics(truth, probs, labels)
    at_point = multiclass_metrics(truth, np.eye(len(labels))[served], labels)
    for label in labels:
        at_point["per_class"][label]["auc"] = ranked["per_class"][label]["auc"]
    at_point["macro_auc"] = ranked["macro_auc"]
    return at_point


def class_rows(
    prefix: str,
    metrics: dict[str, Any],
    truth: np.ndarray,
    probs: np.ndarray,
    served: np.ndarray,
    intervals: Intervals,
    paper_of: Callable[[str, str], PaperValue],
    fold_path: Callable[[dict, str, str], Any] | None,
    metrics_wanted: Sequence[str] = ("auc", "sensitivity", "specificity", "f1"),
) -> list[dict[str, Any]]:
    """Per class (one-vs-rest): AUC, sensitivity, specificity, F1 with intervals."""
    rows = []
    statistics = {
        "auc": bs.auc_rows,
        "sensitivity": bs.sensitivity_rows,
        "specificity": bs.specificity_rows,
        "f1": bs.f1_rows,
    }
    for k, label in enumerate(metrics["labels"]):
        is_class, score, chosen = truth == k, probs[:, k], served == k
        for metric in metrics_wanted:
            arrays = (is_class, score) if metric == "auc" else (is_class, chosen)
            figure = (lambda t, lab=label, m=metric: fold_path(t, lab, m)) if fold_path else None
            interval = intervals.choose(
                "staging", figure, lambda s=statistics[metric], a=arrays: intervals.bootstrap(s, *a)
            )
            rows.append(
                make_row(
                    f"{prefix}.{label}.{metric}",
                    f"{prefix} {label}: {METRIC_NAMES[metric]}",
                    metrics["per_class"][label][metric],
                    interval,
                    paper_of(label, metric),
                    int(is_class.sum()),
                    cls=label,
                    metric=metric,
                )
            )
    return rows


def presence_collapse_table(
    heads: HeadTable, subject_rows: list[dict[str, Any]], intervals: Intervals
) -> dict[str, Any]:
    d = DiagnosisArrays.of(heads)
    n = len(heads)
    presence_auc = binary_metrics(d.presence_truth, d.presence_score)["auc"]
    at_point = binary_metrics(d.presence_truth, d.presence_served.astype(float))
    reference = paper.PAPER_TABLE_IV
    rows = [
        make_row(
            "presence.auc",
            "presence AUC per FH",
            presence_auc,
            intervals.choose(
                "staging",
                lambda t: t["presence"]["auc"],
                lambda: intervals.bootstrap(bs.auc_rows, d.presence_truth, d.presence_score),
            ),
            reference[("presence", "auc")],
            n,
        ),
        make_row(
            "presence.sensitivity",
            "presence sensitivity per FH",
            at_point["sensitivity"],
            intervals.bootstrap(bs.sensitivity_rows, d.presence_truth, d.presence_served),
            reference[("presence", "sensitivity")],
            n,
        ),
        make_row(
            "presence.specificity",
            "presence specificity per FH",
            at_point["specificity"],
            intervals.bootstrap(bs.specificity_rows, d.presence_truth, d.presence_served),
            reference[("presence", "specificity")],
            n,
        ),
        make_row(
            "presence.f1",
            "presence F1 per FH",
            at_point["f1"],
            intervals.bootstrap(bs.f1_rows, d.presence_truth, d.presence_served),
            None,
            n,
        ),
        *subject_rows,
    ]
    collapse = served_multiclass(d.collapse_truth, d.collapse_probs, d.collapse_served, COLLAPSE_CLASSES)

    def paper_collapse(label: str, metric: str) -> PaperValue:
        return reference.get((label, metric))

    rows += class_rows(
        "collapse", collapse, d.collapse_truth, d.collapse_probs, d.collapse_served, intervals, paper_collapse, None
    )
    rows.append(
        make_row(
            "collapse.macro_f1",
            "collapse macro F1 (3 classes)",
            collapse["macro_f1"],
            intervals.bootstrap(
                lambda t, p: bs.macro_f1_rows(t, p, len(COLLAPSE_CLASSES)), d.collapse_truth, d.collapse_served
            ),
            None,
            n,
        )
    )
    return {
        "id": "table_iv",
        "title": "Table IV — AVNFH detection (presence), subject level, pre-/post-collapse",
        "caption": "Presence = stage II–IV; its score is 1 − P(absence), its answer the presence of the served stage. "
        "Subject level: a subject is diseased when any hip is; the service's study aggregation (most "
        "severe stage per side over the subject's radiographs) over AP+FL, AP only or FL only; a missed "
        "head counts as not diagnosed. Collapse: absence / pre-collapse (II) / post-collapse (III+IV).",
        "rows": rows,
        "confusion": {
            "presence": at_point_confusion(d.presence_truth, d.presence_served, 2),
            "collapse": collapse["confusion_matrix"],
        },
    }


def at_point_confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> list[list[int]]:
    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (truth.astype(int), predicted.astype(int)), 1)
    return matrix.tolist()


def staging_table(heads: HeadTable, intervals: Intervals) -> dict[str, Any]:
    d = DiagnosisArrays.of(heads)
    staging = served_multiclass(d.stage_truth, d.stage_probs, d.stage_served, STAGES)

    def paper_stage(label: str, metric: str) -> PaperValue:
        return paper.PAPER_TABLE_V[label].get(metric)

    rows = class_rows(
        "staging",
        staging,
        d.stage_truth,
        d.stage_probs,
        d.stage_served,
        intervals,
        paper_stage,
        lambda t, label, metric: t["staging"]["per_class"][label][metric],
    )
    rows.append(
        make_row(
            "staging.macro_f1",
            "staging 4-class macro F1",
            staging["macro_f1"],
            intervals.choose(
                "staging",
                lambda t: t["staging"]["macro_f1"],
                lambda: intervals.bootstrap(
                    lambda t, p: bs.macro_f1_rows(t, p, len(STAGES)), d.stage_truth, d.stage_served
                ),
            ),
            paper.PAPER_STAGING_MACRO_F1,
            len(heads),
        )
    )
    rows.append(
        make_row(
            "staging.accuracy",
            "staging 4-class accuracy",
            staging["accuracy"],
            intervals.bootstrap(bs.accuracy_rows, d.stage_truth, d.stage_served),
            None,
            len(heads),
        )
    )
    return {
        "id": "table_v",
        "title": "Table V — AVNFH staging (absence, II, III, IV)",
        "caption": "One-vs-rest per stage; sensitivity, specificity and F1 at the operating point (the served "
        "stage = argmax). Macro F1 beside Table VI's N = 5 figure.",
        "rows": rows,
        "confusion": {"staging": staging["confusion_matrix"]},
    }


# ---------------------------------------------------------------- subject level


def subject_level(collected: Collected, intervals: Intervals) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sensitivity per subject for AP+FL, AP only, FL only, using the service's study aggregation."""
    truth_stage: dict[str, list[str]] = {}
    for result in collected.radiographs:
        truth_stage.setdefault(result.image.subject_id, []).extend(a.stage for a in result.truth)
    details, rows = {}, []
    for name, views in (("AP+FL", ("AP", "FL")), ("AP", ("AP",)), ("FL", ("FL",))):
        truth, predicted = subject_answers(collected.radiographs, truth_stage, views)
        positives = truth == 1
        sensitivity = float(predicted[positives].mean()) if positives.any() else None
        specificity = float(1 - predicted[~positives].mean()) if (~positives).any() else None
        interval = intervals.bootstrap(bs.sensitivity_rows, truth, predicted) if positives.any() else None
        rows.append(
            make_row(
                f"subject.{name}.sensitivity",
                f"sensitivity per subject, {name}",
                sensitivity,
                interval,
                paper.PAPER_TABLE_IV[("subject", name)],
                int(positives.sum()),
                views=list(views),
            )
        )
        details[name] = {
            "subjects": int(truth.size),
            "diseased": int(positives.sum()),
            "sensitivity": sensitivity,
            "specificity": specificity,
        }
    return rows, details


def subject_answers(
    results: Sequence[RadiographResult], truth_stage: dict[str, list[str]], views: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(truth diseased, predicted diseased) per subject that has a radiograph of ``views``."""
    by_subject: dict[str, list[RadiographResult]] = {}
    for result in results:
        if result.image.view in views:
            by_subject.setdefault(result.image.subject_id, []).append(result)
    truth, predicted = [], []
    for subject, subject_results in sorted(by_subject.items()):
        diagnosed = [StudyRadiograph(i, r.diagnosis) for i, r in enumerate(subject_results) if r.diagnosis is not None]
        sides = aggregate_sides(diagnosed) if diagnosed else ()
        stages = truth_stage.get(subject) or ["absence"]  # a radiograph may show no annotated head
        truth.append(int(has_avn(most_severe(stages))))
        predicted.append(int(any(has_avn(side.stage) for side in sides)))
    return np.array(truth, dtype=int), np.array(predicted, dtype=int)


# ---------------------------------------------------------------- calibration and uncertainty


CLASSIFIER_ARRAYS: dict[str, Callable[[HeadTable], tuple[np.ndarray, np.ndarray, bool]]] = {
    "view": lambda h: (h.view_probs, h.view_truth, False),
    "side": lambda h: (h.side_probs, h.side_truth, False),
    "staging": lambda h: (h.stage_probs, h.stage_truth, False),
    "notes": lambda h: (h.notes_raw, h.notes_truth, True),  # the notes model's own output
}


def calibration_section(
    heads: HeadTable, served_temperatures: dict[str, float], fitted: dict[str, dict[str, Any]], bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """ECE and NLL on the evaluated split before (T = 1) and after temperature scaling, per classifier.

    ``fitted[task]`` holds the temperature fitted on validation data and where it came from (stored in
    the card, or fitted by this evaluation); without one, only "before" is reported.
    """
    rows, reliability = [], {}
    for task, arrays in CLASSIFIER_ARRAYS.items():
        probs, truth, multi_label = arrays(heads)
        logits = logits_from_probabilities(probs, multi_label, served_temperatures.get(task, 1.0))
        before = apply_temperature(logits, 1.0, multi_label)
        fit = fitted.get(task)
        after = apply_temperature(logits, fit["temperature"], multi_label) if fit else None
        row = {
            "task": task,
            "temperature_served": served_temperatures.get(task, 1.0),
            "temperature": fit["temperature"] if fit else None,
            "temperature_source": fit.get("source") if fit else "not fitted (see the notes below)",
            "validation_heads": fit.get("samples") if fit else None,
            "ece_before": classifier_ece(before, truth, multi_label, bins),
            "ece_after": classifier_ece(after, truth, multi_label, bins) if fit else None,
            "nll_before": negative_log_likelihood(logits, truth, 1.0, multi_label),
            "nll_after": negative_log_likelihood(logits, truth, fit["temperature"], multi_label) if fit else None,
            "answers": int(truth.size),
        }
        rows.append(row)
        reliability[task] = {
            "before": reliability_bins(*confidence_and_correct(before, truth, multi_label), bins=bins).to_dict(),
            "after": reliability_bins(*confidence_and_correct(after, truth, multi_label), bins=bins).to_dict()
            if fit
            else None,
        }
    return {
        "id": "calibration",
        "title": "Calibration — ECE before and after temperature scaling",
        "caption": f"Expected calibration error over {bins} equal-width confidence bins on the evaluated split; "
        "'before' at T = 1 (the raw model), 'after' at the temperature fitted on the deployed model's "
        "validation fold (never on this split). Notes: the notes model's own probabilities, every "
        "(head, note) pair one answer, one temperature for all 8 notes. The paper reports no calibration.",
        "bins": bins,
        "rows": rows,
        "reliability": reliability,
    }


def uncertainty_deciles(heads: HeadTable) -> dict[str, Any]:
    """Figure 4: staging probabilities of every (head, stage) pair, one-vs-rest, in deciles, as a
    percentage of the correctly and of the incorrectly classified pairs (a pair is correct when
    "the served stage is this stage" equals "the truth is this stage")."""
    probs = heads.stage_probs
    is_stage = heads.stage_truth[:, None] == np.arange(len(STAGES))[None, :]
    chosen = served_stage_indices(probs)[:, None] == np.arange(len(STAGES))[None, :]
    correct = (is_stage == chosen).ravel()
    values = probs.ravel()
    edges = np.linspace(0.0, 1.0, 11)
    which = bin_index(values, 10)

    def percentages(mask: np.ndarray) -> list[float]:
        counts = np.bincount(which[mask], minlength=10)
        return (100.0 * counts / max(int(mask.sum()), 1)).tolist()

    extreme = (values < 0.1) | (values >= 0.9)
    return {
        "id": "uncertainty",
        "title": "Uncertainty — staging probabilities of correct vs incorrect answers (figure 4)",
        "caption": "Each (head, stage) pair is a one-vs-rest answer, as in the paper's figure 4.",
        "edges": edges.tolist(),
        "correct_percent": percentages(correct),
        "incorrect_percent": percentages(~correct),
        "correct_count": int(correct.sum()),
        "incorrect_count": int((~correct).sum()),
        "correct_extreme_share": float(extreme[correct].mean()) if correct.any() else None,
        "incorrect_extreme_share": float(extreme[~correct].mean()) if (~correct).any() else None,
        "paper": paper.PAPER_FIGURE_4,
    }
