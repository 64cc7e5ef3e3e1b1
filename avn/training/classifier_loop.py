"""The training loop of one head classifier on one fold (plain PyTorch, no trainer framework).

Adam (lr 1e-4, weight decay 5e-4), learning rate halved when the validation score stalls,
per-epoch validation, the best weights kept. After every epoch the loop writes its state so an
interrupted run resumes where it stopped; per-epoch randomness derives from (seed, epoch), so a
resumed run takes the same path as an uninterrupted one. Validation runs the model's own
:meth:`~avn.models.classifier.HeadClassifier.predict`: the inference path serving runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avn.models.classifier import HeadClassifier, build_classifier, init_from, normalised_batch
from avn.training.augment import augment_crop, flip_labels
from avn.training.fold_state import run_epochs, training_device
from avn.training.head_data import CropSet
from avn.training.losses import FocalLoss, inverse_frequency_alpha
from avn.training.profiles import Profile
from avn.training.scoring import selection_score, task_metrics


@dataclass
class FitResult:
    model: HeadClassifier  # with the best validation weights
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]]


def loss_for(task: str, train: CropSet, profile: Profile) -> nn.Module:
    if task == "staging":
        alpha = inverse_frequency_alpha(torch.as_tensor(train.labels(task)), classes=4)
        return FocalLoss(alpha=alpha, gamma=profile.focal_gamma)
    if task == "notes":
        return nn.BCEWithLogitsLoss()
    return nn.CrossEntropyLoss()


def predict(model: HeadClassifier, crops: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Probabilities of the (N, S, S) crops, served-style, in chunks that bound the memory of a large set."""
    model.eval()
    out = [
        model.predict(crops[i : i + batch_size].astype(np.float32)).probabilities
        for i in range(0, len(crops), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, len(model.labels)), np.float32)


def fit_classifier(
    task: str,
    train: CropSet,
    val: CropSet,
    profile: Profile,
    work_dir: Path,
    seed: int,
    init_state: dict[str, torch.Tensor] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    epochs: int | None = None,
) -> FitResult:
    """Train ``task`` on ``train``, validate on ``val`` each epoch, return the best model."""
    torch.manual_seed(seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = build_classifier(task).to(training_device())
    if init_state is not None:
        init_from(model, init_state)
    optimiser = torch.optim.Adam(model.parameters(), lr=profile.learning_rate, weight_decay=profile.weight_decay)
    criterion = loss_for(task, train, profile).to(training_device())
    labels = train.labels(task)

    def train_epoch(epoch: int) -> float:
        return _train_one_epoch(task, model, train.crops, labels, criterion, optimiser, profile, seed, epoch, on_step)

    def validate() -> float:
        return selection_score(task, task_metrics(task, val.labels(task), predict(model, val.crops)))

    total_epochs = epochs if epochs is not None else profile.epochs[task]
    state = run_epochs(
        model, optimiser, profile.plateau_patience, work_dir, total_epochs, train_epoch, validate, on_epoch
    )
    return FitResult(model.eval(), state.best_score, state.best_epoch, state.history)


def _train_one_epoch(task, model, crops, labels, criterion, optimiser, profile, seed, epoch, on_step) -> float:
    model.train()
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(crops))
    losses = []
    for start in range(0, len(order), profile.batch_size):
        index = order[start : start + profile.batch_size]
        if len(index) < 2:  # batch norm needs two samples
            continue
        augmented = [augment_crop(crops[i].astype(np.float32), rng) for i in index]
        device = next(model.parameters()).device
        batch = normalised_batch(np.stack([crop for crop, _ in augmented])).to(device)
        flipped = np.array([was_flipped for _, was_flipped in augmented])
        target = torch.from_numpy(flip_labels(task, labels[index], flipped)).to(device)
        optimiser.zero_grad(set_to_none=True)
        loss = criterion(model(batch), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if on_step:
            on_step({"loss": float(np.mean(losses[-20:]))})
    return float(np.mean(losses)) if losses else float("nan")
