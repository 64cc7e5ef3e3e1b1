"""build-store's step that chooses how each head classifier is served (int8, bf16, fp32…).

For every classifier of a run, the crops of its deployed fold are cut from the training data
set, the same way training cut them: validation subjects (what the form is checked on) and a
sample of training subjects (what int8 calibrates its activation ranges on; calibrating on the
check's own crops would flatter it). :func:`avn.models.acceleration.choose_form` times each form
on this machine and refuses any that loses more than 0.005 AUC against fp32 on any label; the
chosen form, its quantised weights and every form's figures are written into a copy of the
checkpoint, which is what the archive packs. The run's own ``model.pt`` stays fp32.

The data set must be the one the models were trained on (its fingerprint is the card's
training-data hash); otherwise the check would measure something else, and build-store refuses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avn.dataset.format import load_dataset
from avn.dataset.images import read_radiograph
from avn.models.acceleration import DETECTOR_FORMS, FormChoice, choose_detector_form, choose_form
from avn.models.checkpoint import METADATA_KEYS, NOT_CARRIED_ON_REWRITE, ModelCard, load_checkpoint, save_checkpoint
from avn.models.detector import FemoralHeadDetector
from avn.training.folds import subject_folds
from avn.training.head_data import CropSet, build_crops, serving_scale
from avn.training.profiles import get_profile
from avn.training.runner import METRICS_FILE, dataset_fingerprint

CALIBRATION_SUBJECTS = 48  # enough radiographs for stable activation ranges, cheap to crop
CALIBRATION_CROPS = 256
SYNTHETIC_CROPS = 64
DETECTOR_CHECK_IMAGES = 48  # validation radiographs the detector forms are checked on


class OptimisationError(RuntimeError):
    """The forms cannot be checked: wrong or missing data set, run without fold records."""


@dataclass(frozen=True)
class Optimisation:
    """How build-store picks served forms: ``data_dir`` is the training data set (None: untrained
    timing-only weights, timed on synthetic crops and chosen by speed, labelled unchecked)."""

    data_dir: Path | None
    report: Callable[[str], None] | None = None  # one line per model (CLI progress)
    forms: tuple[str, ...] | None = None  # the candidates (None: every form this CPU runs at speed)


@dataclass
class FoldCrops:
    calibration: np.ndarray
    validation: CropSet


def optimised_checkpoint(source: Path, target: Path, optimisation: Optimisation, cache: dict) -> FormChoice:
    """Write ``target``: ``source`` with its served form chosen and recorded (the detector's forms
    checked on its validation radiographs, the classifiers' on their validation crops)."""
    model, card = load_checkpoint(source, optimised=False)
    if isinstance(model, FemoralHeadDetector):
        forms = tuple(form for form in optimisation.forms or () if form in DETECTOR_FORMS) or None
        if optimisation.data_dir is None:
            choice = choose_detector_form(model, [], None, forms)
        else:
            images, truths = fold_radiographs(source.parent, optimisation.data_dir, card, cache)
            choice = choose_detector_form(model, images, truths, forms)
    elif optimisation.data_dir is None:
        choice = choose_form(model, _synthetic_crops(card.input_size), None, None, card.input_size, optimisation.forms)
    else:
        crops = fold_crops(source.parent, optimisation.data_dir, card, cache)
        choice = choose_form(
            model,
            crops.calibration,
            crops.validation.crops,
            crops.validation.labels(card.task),
            card.input_size,
            optimisation.forms,
        )
    metadata = {key: getattr(card, key) for key in METADATA_KEYS - NOT_CARRIED_ON_REWRITE}
    save_checkpoint(target, model, card.task, {**metadata, "optimisation": choice.card_record()}, choice.int8_state)
    if optimisation.report:
        optimisation.report(describe_choice(card.task, choice))
    return choice


def describe_choice(task: str, choice: FormChoice) -> str:
    """One line: the served form and every form's time and AUC loss."""
    parts = []
    for name, figures in choice.figures.items():
        speed = "" if figures.ms_per_batch is None else f"{figures.ms_per_batch:.1f} ms"
        measure = "F1" if task == "detection" else "AUC"
        loss = "" if figures.max_auc_loss is None else f" {measure} loss {figures.max_auc_loss:+.4f}"
        refused = "" if figures.accepted else " refused"
        parts.append(f"{name} {speed}{loss}{refused}".strip())
    checked = "" if choice.checked else " (not checked: untrained)"
    return f"{task}: serves {choice.form}, GPU {choice.cuda_form}{checked} — " + "; ".join(parts)


def fold_crops(task_dir: Path, data_dir: Path, card: ModelCard, cache: dict) -> FoldCrops:
    """The calibration and validation crops of the fold ``task_dir``'s model was deployed from."""
    _check_training_data(data_dir, card, cache)
    train_subjects, validation_subjects = deployed_fold_subjects(task_dir, data_dir)
    key = (str(data_dir), card.input_size, validation_subjects)
    if key not in cache:
        dataset = load_dataset(Path(data_dir))
        calibration_subjects = sorted(train_subjects)[:CALIBRATION_SUBJECTS]
        calibration = build_crops(Path(data_dir), dataset, calibration_subjects, card.input_size, serving_scale)
        validation = build_crops(Path(data_dir), dataset, validation_subjects, card.input_size, serving_scale)
        if len(validation) == 0:
            raise OptimisationError(f"the deployed fold of {task_dir} has no validation crops")
        cache[key] = FoldCrops(calibration.crops[:CALIBRATION_CROPS].astype(np.float32), validation)
    return cache[key]


def fold_radiographs(
    task_dir: Path, data_dir: Path, card: ModelCard, cache: dict
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The detector's validation radiographs (at most :data:`DETECTOR_CHECK_IMAGES`, in file
    order) and their hand boxes, from the fold it was deployed from."""
    _check_training_data(data_dir, card, cache)
    _, validation_subjects = deployed_fold_subjects(task_dir, data_dir)
    dataset = load_dataset(Path(data_dir))
    wanted = set(validation_subjects)
    boxes: dict[int, list] = {}
    for annotation in dataset.annotations:
        boxes.setdefault(annotation.image_id, []).append(annotation.xyxy)
    chosen = sorted((image for image in dataset.images if image.subject_id in wanted), key=lambda i: i.file_name)
    chosen = chosen[:DETECTOR_CHECK_IMAGES]
    if not chosen:
        raise OptimisationError(f"the deployed fold of {task_dir} has no validation radiographs")
    images = [read_radiograph(Path(data_dir) / image.file_name).pixels for image in chosen]
    truths = [np.asarray(boxes.get(image.id, []), dtype=np.float32).reshape(-1, 4) for image in chosen]
    return images, truths


def _check_training_data(data_dir: Path, card: ModelCard, cache: dict) -> None:
    if not (Path(data_dir) / "annotations.json").is_file():
        raise OptimisationError(f"no training data set at {data_dir} (pass the one the run was trained on)")
    fingerprint = cache.get(("fingerprint", str(data_dir))) or dataset_fingerprint(Path(data_dir))
    cache[("fingerprint", str(data_dir))] = fingerprint
    if fingerprint != card.training_data_hash:
        raise OptimisationError(
            f"{data_dir} is not the data set the {card.task} model was trained on "
            f"(fingerprint {fingerprint[:12]}, card {card.training_data_hash[:12]})"
        )


def deployed_fold_subjects(task_dir: Path, data_dir: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training, validation) subjects of the deployed fold: as training recorded them, or, for
    runs that predate that record, the same folds cut again from the profile and seed."""
    metrics_path = Path(task_dir) / METRICS_FILE
    if not metrics_path.is_file():
        raise OptimisationError(f"{metrics_path} is missing: the run does not say which fold was deployed")
    metrics = json.loads(metrics_path.read_text())
    recorded = metrics.get("deployed_fold_subjects")
    if recorded:
        return tuple(recorded["train"]), tuple(recorded["validation"])
    profile = get_profile(metrics["profile"])
    subjects = load_dataset(Path(data_dir)).splits.get("train", [])
    folds = subject_folds(subjects, profile.folds, profile.repeats, metrics["seed"], profile.fold_limit)
    for fold in folds:
        if fold.name == metrics["deployed_fold"]:
            return fold.train_subjects, fold.val_subjects
    raise OptimisationError(f"fold {metrics['deployed_fold']} of {task_dir} cannot be cut again from {data_dir}")


def _synthetic_crops(input_size: int) -> np.ndarray:
    """Calibration input for untrained weights: smooth random crops in [0, 1]."""
    rng = np.random.default_rng(0)
    return rng.random((SYNTHETIC_CROPS, input_size, input_size), dtype=np.float32)
