"""``avn calibrate``: fit each classifier's temperature on its validation fold and store it with the model.

For view, side, staging and notes, the deployed checkpoint's validation subjects are rebuilt from
the run (:mod:`avn.evaluation.run_info`), their heads cropped at the serving scale with the
training code's crop builder (exactly what validation saw during training), and one temperature
fitted on the logits (:func:`avn.evaluation.calibration.fit_temperature`). The T-set is never used.

The temperature goes into the model card (``ModelCard.temperature``) of ``RUN/<task>/model.pt``;
``load_checkpoint`` hands it to the model, whose ``probabilities`` divide the logits by it, so the
TorchServe handlers and the in-process backend both serve calibrated probabilities. Archives built
afterwards (``avn build-store``, or ``--store`` here) carry the new card. The card's version gets a
``-t<T>`` suffix: a different temperature is a different answer, and the gateway's result cache is
keyed by model version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avn.dataset.format import load_dataset
from avn.evaluation.calibration import TemperatureFit, fit_temperature
from avn.evaluation.run_info import RunInfoError, deployed_validation_subjects, read_task_metrics
from avn.models.checkpoint import load_checkpoint, rewrite_card
from avn.models.classifier import CLASSIFIER_TASKS, MULTI_LABEL_TASKS, normalised_batch
from avn.training.head_data import CropSet, build_crops, serving_scale
from avn.training.runner import MODEL_FILE, dataset_fingerprint

CALIBRATION_KEY = "calibration"  # under ModelCard.extra
# Below this many validation heads a fitted temperature is mostly noise (it may run to its bounds).
FEW_VALIDATION_HEADS = 30
WEIGHTS_VERSION_KEY = "weights_version"  # under ModelCard.extra: the version before any temperature


def validation_crops(
    run_dir: Path, data_dir: Path, tasks: Iterable[str], on_image: Callable[[], None] | None = None
) -> dict[str, tuple[str, CropSet]]:
    """Per task: (deployed fold, its validation crops at the serving scale and the model's input size).

    Refuses a data set other than the one the run was trained on (its fingerprint is in metrics.json).
    """
    dataset = load_dataset(data_dir)
    fingerprint = dataset_fingerprint(Path(data_dir))
    wanted: dict[str, tuple[str, tuple[str, ...], int]] = {}
    for task in tasks:
        doc = read_task_metrics(run_dir, task)
        if doc.get("training_data_hash") != fingerprint:
            raise RunInfoError(
                f"{run_dir}/{task} was trained on another data set than {data_dir}; "
                "its validation fold cannot be rebuilt from this one"
            )
        fold, subjects = deployed_validation_subjects(doc, dataset)
        wanted[task] = (fold, subjects, int(doc["input_size"]))
    crops: dict[tuple[int, tuple[str, ...]], CropSet] = {}
    result = {}
    for task, (fold, subjects, size) in wanted.items():
        key = (size, tuple(sorted(subjects)))
        if key not in crops:  # the classifiers share a fold and a crop size: crop once
            crops[key] = build_crops(Path(data_dir), dataset, subjects, size, serving_scale, on_image=on_image)
        result[task] = (fold, crops[key])
    return result


@torch.no_grad()
def logits_of(model: torch.nn.Module, crops: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Raw logits (no temperature) of a classifier on (N, S, S) crops, normalised as served."""
    model.eval()
    out = [
        model(normalised_batch(crops[i : i + batch_size].astype(np.float32))).numpy()
        for i in range(0, len(crops), batch_size)
    ]
    return np.concatenate(out).astype(np.float64)


def fit_task_temperature(checkpoint: Path, task: str, crops: CropSet) -> TemperatureFit:
    model, _ = load_checkpoint(checkpoint)
    return fit_temperature(logits_of(model, crops.crops), crops.labels(task), multi_label=task in MULTI_LABEL_TASKS)


def store_temperature(checkpoint: Path, fit: TemperatureFit, provenance: dict[str, Any]) -> str:
    """Rewrite ``checkpoint`` with the fitted temperature in its card; returns the new version."""
    model, card = load_checkpoint(checkpoint)
    weights_version = str(card.extra.get(WEIGHTS_VERSION_KEY, card.version))
    version = f"{weights_version}-t{fit.temperature:.4f}"
    extra = {**card.extra, WEIGHTS_VERSION_KEY: weights_version, CALIBRATION_KEY: {**fit.to_dict(), **provenance}}
    rewrite_card(checkpoint, model, card, version=version, temperature=fit.temperature, extra=extra)
    return version


def calibrate_run(
    run_dir: Path,
    data_dir: Path,
    tasks: Iterable[str] = tuple(CLASSIFIER_TASKS),
    write: bool = True,
    on_image: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit (and with ``write``, store) the temperature of each classifier of ``run_dir``.

    Returns per task the fit (temperature, NLL and ECE on validation before/after, heads), the
    fold it was fitted on and, when written, the checkpoint's new version.
    """
    tasks = tuple(tasks)
    crops = validation_crops(Path(run_dir), Path(data_dir), tasks, on_image)
    results = {}
    for task in tasks:
        fold, val = crops[task]
        checkpoint = Path(run_dir) / task / MODEL_FILE
        fit = fit_task_temperature(checkpoint, task, val)
        provenance = {"fold": fold, "fitted_on": "validation fold of the deployed model"}
        results[task] = {**fit.to_dict(), **provenance}
        if fit.samples < FEW_VALIDATION_HEADS:
            results[task]["warning"] = (
                f"{task}: only {fit.samples} validation heads; the temperature {fit.temperature:.3g} is unreliable"
            )
        if write:
            results[task]["version"] = store_temperature(checkpoint, fit, provenance)
    return results
