"""``avn train``: cross-validated training of the five models into a run folder.

For each task, the training split is cut into subject-grouped folds (``repeats`` × ``folds``);
each fold trains a model with per-epoch validation and keeps its best epoch, which is then
scored on the held-out T-set. The fold with the best validation score becomes the task's
deployable checkpoint ``RUN_DIR/<task>/model.pt``; ``RUN_DIR/<task>/metrics.json`` holds every
fold's figures, their mean and spread, and the deployed model's T-set metrics. Finished folds are
skipped on a rerun and an interrupted fold resumes from its last epoch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avn.dataset.check import check_dataset
from avn.dataset.format import ANNOTATIONS_FILE, Dataset, load_dataset
from avn.dataset.real import ManifestError, load_manifest, manifest_fingerprint
from avn.metrics import to_jsonable
from avn.models.checkpoint import load_checkpoint, save_checkpoint
from avn.models.classifier import build_classifier
from avn.models.detector import DETECTOR_INPUT_SIZES, build_detector
from avn.operating_points import OperatingPointError, choose_operating_points, is_present, presence_probability
from avn.training.classifier_loop import fit_classifier, predict
from avn.training.detection_loop import (
    build_detection_set,
    build_real_detection_set,
    choose_score_threshold,
    detection_metrics,
    fit_detector,
)
from avn.training.folds import Fold, subject_folds
from avn.training.head_data import CropSet, build_crops, serving_scale, training_scales
from avn.training.profiles import Profile
from avn.training.scoring import task_metrics

TASK_ORDER = ("detection", "view", "side", "staging", "notes")  # staging starts from view
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
FOLD_RESULT = "result.json"
FOLD_WEIGHTS = "best_weights.pt"


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad data set, missing prerequisite model)."""


@dataclass
class TrainingContext:
    data_dir: Path
    run_dir: Path
    profile: Profile
    seed: int
    dataset: Dataset
    data_hash: str
    folds: list[Fold]
    reporter: Callable[[str, int, int, dict[str, float]], None] | None = None  # (stage, done, total, figures)
    logger: Callable[[str], None] | None = None  # one line per finished epoch
    crops: tuple[CropSet, CropSet] | None = None  # built on first use, shared by the classifiers
    real_hips: Path | None = None  # real radiographs added to every fold's detector training (avn.dataset.real)

    def log_epoch(self, stage: str, entry: dict[str, Any]) -> None:
        if self.logger:
            self.logger(
                f"{stage} epoch {entry['epoch'] + 1}: loss {entry['loss']:.4f}, "
                f"validation {entry['val_score']:.4f}, lr {entry['lr']:.2e}"
            )

    def report(self, stage: str, done: int, total: int, **figures: float) -> None:
        if self.reporter:
            self.reporter(stage, done, total, figures)


def dataset_fingerprint(folder: Path) -> str:
    """SHA-256 over annotations.json and every image's name and size (reading GBs of pixels
    for a fingerprint would cost more than it protects)."""
    digest = hashlib.sha256((folder / ANNOTATIONS_FILE).read_bytes())
    for path in sorted((folder / "images").rglob("*")) if (folder / "images").exists() else []:
        if path.is_file():
            digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def prepare_context(
    data_dir: Path,
    run_dir: Path,
    profile: Profile,
    seed: int,
    folds: int | None,
    repeats: int | None,
    reporter=None,
    logger=None,
    real_hips: Path | None = None,
) -> TrainingContext:
    report = check_dataset(data_dir)
    if not report.ok:
        raise TrainingError(f"data set {data_dir} does not pass `avn data check`:\n{report.format_text()}")
    dataset = load_dataset(data_dir)
    train_subjects = dataset.splits.get("train", [])
    if not dataset.splits.get("test"):
        raise TrainingError(f"data set {data_dir} has no T-set subjects (split 'test')")
    fold_list = subject_folds(
        train_subjects,
        folds or profile.folds,
        repeats or profile.repeats,
        seed,
        profile.fold_limit if folds is None and repeats is None else None,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if real_hips is not None:
        try:
            load_manifest(real_hips)
        except ManifestError as error:
            raise TrainingError(f"real training set: {error} (`avn train --phantom-only` trains without it)") from error
    return TrainingContext(
        data_dir,
        run_dir,
        profile,
        seed,
        dataset,
        dataset_fingerprint(data_dir),
        fold_list,
        reporter,
        logger,
        real_hips=real_hips,
    )


def train(tasks: list[str], context: TrainingContext) -> dict[str, dict[str, Any]]:
    """Train ``tasks`` (in dependency order) and return each task's metrics document."""
    ordered = [task for task in TASK_ORDER if task in tasks]
    results = {}
    for task in ordered:
        finished = _finished_task(context, task)
        if finished is not None:  # a rerun after an interruption picks up at the first unfinished task
            results[task] = finished
            continue
        started = time.perf_counter()
        results[task] = train_detection(context) if task == "detection" else train_classifier_task(task, context)
        results[task]["train_seconds"] = round(time.perf_counter() - started, 1)
        _write_json(context.run_dir / task / METRICS_FILE, results[task])
    return results


def head_crops(context: TrainingContext) -> tuple[CropSet, CropSet]:
    """(training pool at the profile's resample scales, held-out crops at the serving scale),
    built once per run and shared by the four classifiers."""
    if context.crops is None:
        dataset, profile = context.dataset, context.profile
        train_subjects, test_subjects = dataset.splits["train"], dataset.splits["test"]
        wanted = set(train_subjects) | set(test_subjects)
        # The pool reads the training radiographs, the held-out set those plus the T-set's.
        images_total = sum(
            (image.subject_id in wanted) + (image.subject_id in train_subjects) for image in dataset.images
        )
        progress = {"done": 0}

        def on_image() -> None:
            progress["done"] += 1
            context.report("cropping femoral heads", progress["done"], images_total)

        pool = build_crops(
            context.data_dir,
            dataset,
            train_subjects,
            profile.input_size,
            training_scales(profile.resamples),
            on_image=on_image,
        )
        held = build_crops(
            context.data_dir, dataset, sorted(wanted), profile.input_size, serving_scale, on_image=on_image
        )
        context.crops = (pool, held)
    return context.crops


def train_classifier_task(task: str, context: TrainingContext) -> dict[str, Any]:
    profile, dataset = context.profile, context.dataset
    init_state = _view_trunk(context) if task == "staging" else None
    pool, held = head_crops(context)
    test = held.select_subjects(dataset.splits["test"])
    fold_docs = []
    for fold in context.folds:
        fold_dir = context.run_dir / task / "folds" / fold.name
        if (fold_dir / FOLD_RESULT).exists():
            fold_docs.append(json.loads((fold_dir / FOLD_RESULT).read_text()))
            continue
        steps = {"n": 0}
        epochs = profile.epochs[task]
        train_set = pool.select_subjects(fold.train_subjects)
        val_set = held.select_subjects(fold.val_subjects)
        per_epoch = max(1, -(-len(train_set) // profile.batch_size))

        def on_step(
            figures: dict[str, float], *, label=f"{task} {fold.name}", steps=steps, total=per_epoch * epochs
        ) -> None:
            steps["n"] += 1
            context.report(label, steps["n"], total, **figures)

        fit = fit_classifier(
            task,
            train_set,
            val_set,
            profile,
            fold_dir,
            _fold_seed(context, fold),
            init_state,
            on_step,
            on_epoch=lambda entry, label=f"{task} {fold.name}": context.log_epoch(label, entry),
        )
        doc = {
            "fold": fold.name,
            "best_epoch": fit.best_epoch,
            "val_score": fit.best_score,
            "train_crops": len(train_set),
            "val_heads": len(val_set),
            "test": task_metrics(task, test.labels(task), predict(fit.model, test.crops)),
        }
        torch.save(fit.model.state_dict(), fold_dir / FOLD_WEIGHTS)
        _write_json(fold_dir / FOLD_RESULT, doc)
        fold_docs.append(to_jsonable(doc))
    best = max(fold_docs, key=lambda d: d["val_score"])
    model = build_classifier(task)
    model.load_state_dict(
        torch.load(
            context.run_dir / task / "folds" / best["fold"] / FOLD_WEIGHTS, map_location="cpu", weights_only=True
        )
    )
    points = {}
    if task == "staging":
        best_fold = next(fold for fold in context.folds if fold.name == best["fold"])
        points = staging_operating_points(model, held.select_subjects(best_fold.val_subjects), context)
    return _finish(task, context, model, fold_docs, best, input_size=profile.input_size, operating_points=points)


def staging_operating_points(model, val_set: CropSet, context: TrainingContext) -> dict[str, Any]:
    """The deployed staging model's operating points on presence, chosen on its validation fold
    (avn/operating_points.py); empty, with a note in the log, when that fold cannot define them."""
    scores = presence_probability(predict(model, val_set.crops))
    try:
        chosen = choose_operating_points(is_present(val_set.labels("staging")), scores)
    except OperatingPointError as error:
        if context.logger:
            context.logger(f"staging: no operating points ({error}); the model serves its argmax")
        return {}
    return {name: point.to_dict() for name, point in chosen.items()}


def train_detection(context: TrainingContext) -> dict[str, Any]:
    profile, dataset = context.profile, context.dataset
    input_size = DETECTOR_INPUT_SIZES[profile.detector_backbone]
    train_subjects, test_subjects = dataset.splits["train"], dataset.splits["test"]
    wanted = list(train_subjects) + list(test_subjects)
    total = sum(1 for image in dataset.images if image.subject_id in set(wanted))
    progress = {"done": 0}

    def on_image() -> None:
        progress["done"] += 1
        context.report("detection: preparing radiographs", progress["done"], total)

    everything = build_detection_set(context.data_dir, dataset, wanted, input_size, on_image)
    real = build_real_detection_set(context.real_hips, input_size) if context.real_hips else None
    real_val = build_real_detection_set(context.real_hips, input_size, "validation") if context.real_hips else None
    test = everything.select_subjects(test_subjects)
    fold_docs = []
    for fold in context.folds:
        fold_dir = context.run_dir / "detection" / "folds" / fold.name
        if (fold_dir / FOLD_RESULT).exists():
            fold_docs.append(json.loads((fold_dir / FOLD_RESULT).read_text()))
            continue
        train_set = everything.select_subjects(fold.train_subjects)
        if real is not None:  # real anatomy in training only: validation and the T-set stay phantom
            train_set = train_set + real
        val_set = everything.select_subjects(fold.val_subjects)
        epochs = profile.epochs["detection"]
        per_epoch = max(1, -(-len(train_set) // profile.detector_batch_size))
        steps = {"n": 0}

        def on_step(
            figures: dict[str, float], *, label=f"detection {fold.name}", steps=steps, total=per_epoch * epochs
        ) -> None:
            steps["n"] += 1
            context.report(label, steps["n"], total, **figures)

        detector, score, best_epoch, _ = fit_detector(
            train_set,
            val_set,
            profile,
            fold_dir,
            _fold_seed(context, fold),
            on_step=on_step,
            on_epoch=lambda entry, label=f"detection {fold.name}": context.log_epoch(label, entry),
        )
        threshold = choose_score_threshold(detector, val_set)
        detector.configure_postprocessing(top_k=detector.top_k, min_score=threshold, nms_iou=detector.nms_iou)
        doc = {
            "fold": fold.name,
            "best_epoch": best_epoch,
            "val_score": score,
            "score_threshold": threshold,
            "train_radiographs": len(train_set),
            "real_train_radiographs": len(real) if real is not None else 0,
            "val_radiographs": len(val_set),
            "test": detection_metrics(detector, test, score_threshold=threshold),
        }
        if real_val is not None and len(real_val):  # measured, never used to choose: real anatomy held out
            doc["real_validation"] = detection_metrics(detector, real_val, score_threshold=threshold)
        torch.save(detector.state_dict(), fold_dir / FOLD_WEIGHTS)
        _write_json(fold_dir / FOLD_RESULT, doc)
        fold_docs.append(to_jsonable(doc))
    best = max(fold_docs, key=lambda d: d["val_score"])
    detector = build_detector(profile.detector_backbone, min_score=best["score_threshold"])
    detector.load_state_dict(
        torch.load(
            context.run_dir / "detection" / "folds" / best["fold"] / FOLD_WEIGHTS, map_location="cpu", weights_only=True
        )
    )
    real_record = real_hips_record(context.real_hips) if context.real_hips else None
    return _finish("detection", context, detector, fold_docs, best, input_size=input_size, real_hips=real_record)


def real_hips_record(folder: Path) -> dict[str, Any]:
    """What a detector's metrics record of the real training set it saw."""
    manifest = load_manifest(folder)
    trained = manifest.of_split("train")
    return {
        "folder": str(folder),
        "fingerprint": manifest_fingerprint(folder),
        "radiographs": len(trained),
        "heads": sum(len(entry.heads) for entry in trained),
        "prostheses": sum(len(entry.prostheses) for entry in trained),
        "validation_radiographs": len(manifest.of_split("validation")),
    }


def _finish(
    task: str,
    context: TrainingContext,
    model,
    fold_docs: list[dict],
    best: dict,
    input_size: int,
    operating_points: dict[str, Any] | None = None,
    real_hips: dict[str, Any] | None = None,
) -> dict[str, Any]:
    version = f"{task}-{_weights_digest(model)[:12]}"
    doc = {
        "task": task,
        "profile": context.profile.name,
        "seed": context.seed,
        "version": version,
        "training_data_hash": context.data_hash,
        "input_size": input_size,
        "deployed_fold": best["fold"],
        # build-store checks the served forms on these subjects' crops (avn/optimisation.py)
        "deployed_fold_subjects": _fold_subjects(context, best["fold"]),
        "test": best["test"],
        "folds": fold_docs,
        "fold_summary": summarise_folds(task, fold_docs),
        **({"operating_points": operating_points} if operating_points else {}),
        **({"real_hips": real_hips} if real_hips else {}),
    }
    save_checkpoint(
        context.run_dir / task / MODEL_FILE,
        model,
        task,
        {
            "version": version,
            "training_data_hash": context.data_hash,
            "metrics": to_jsonable(best["test"]),
            "input_size": input_size,
            "extra": {
                "profile": context.profile.name,
                "fold": best["fold"],
                **({"real_hips": real_hips} if real_hips else {}),
            },
            "operating_points": operating_points or {},
        },
    )
    return to_jsonable(doc)


def _fold_subjects(context: TrainingContext, name: str) -> dict[str, list[str]]:
    fold = next((fold for fold in context.folds if fold.name == name), None)
    if fold is None:
        return {}
    return {"train": list(fold.train_subjects), "validation": list(fold.val_subjects)}


def headline_figures(task: str, test: dict[str, Any]) -> dict[str, float | None]:
    """The few numbers per task that the paper reports and the README tabulates."""
    if task == "detection":
        return {f"f1@{t}": test[t]["f1"] for t in ("0.5", "0.6", "0.7")}
    if task == "staging":
        figures = {"presence_auc": test["presence"]["auc"], "staging_macro_f1": test["staging"]["macro_f1"]}
        figures.update({f"auc_{stage}": m["auc"] for stage, m in test["staging"]["per_class"].items()})
        return figures
    if task == "notes":
        return {"macro_auc": test["macro_auc"], "micro_auc": test["micro_auc"]}
    return {"auc": test["auc"], "sensitivity": test["sensitivity"], "specificity": test["specificity"]}


def summarise_folds(task: str, fold_docs: list[dict]) -> dict[str, dict[str, float | None]]:
    """Mean, standard deviation and 2.5/97.5 percentiles of each headline figure over folds."""
    figures = [headline_figures(task, doc["test"]) for doc in fold_docs]
    summary = {}
    for key in figures[0] if figures else []:
        values = np.array([f[key] for f in figures if f[key] is not None], dtype=float)
        if values.size == 0:
            summary[key] = {"mean": None, "std": None, "p2.5": None, "p97.5": None, "n": 0}
            continue
        summary[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "p2.5": float(np.percentile(values, 2.5)),
            "p97.5": float(np.percentile(values, 97.5)),
            "n": int(values.size),
        }
    return summary


def _finished_task(context: TrainingContext, task: str) -> dict[str, Any] | None:
    metrics_path = context.run_dir / task / METRICS_FILE
    if not (metrics_path.exists() and (context.run_dir / task / MODEL_FILE).exists()):
        return None
    doc = json.loads(metrics_path.read_text())
    same_folds = [d["fold"] for d in doc.get("folds", [])] == [f.name for f in context.folds]
    same_data = doc.get("training_data_hash") == context.data_hash
    if task == "detection":  # the real training set is data too
        wanted_real = manifest_fingerprint(context.real_hips) if context.real_hips else None
        same_data = same_data and doc.get("real_hips", {}).get("fingerprint") == wanted_real
    return doc if same_folds and same_data and doc.get("profile") == context.profile.name else None


def _view_trunk(context: TrainingContext) -> dict[str, torch.Tensor]:
    path = context.run_dir / "view" / MODEL_FILE
    if not path.exists():
        raise TrainingError(
            f"staging starts from the trained view model, but {path} does not exist: train 'view' first"
        )
    model, _ = load_checkpoint(path)
    return model.state_dict()


def _fold_seed(context: TrainingContext, fold: Fold) -> int:
    return context.seed * 1000 + fold.repeat * 100 + fold.index


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(document), indent=1))
