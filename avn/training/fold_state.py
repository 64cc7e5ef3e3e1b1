"""The epoch loop of one training fold and what it persists, shared by the classifier and detector.

Each epoch trains, validates, halves the learning rate when the validation score stalls, keeps
the best weights, and saves the model, optimiser and scheduler states with the per-epoch history
(also written as ``history.json`` for people to read), so that an interrupted run resumes exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"


def training_device() -> torch.device:
    """CUDA when present; otherwise the CPU, where torch already uses every core."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class FoldState:
    best_weights: dict[str, torch.Tensor] | None = None
    best_score: float = float("-inf")
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)

    def record_epoch(self, model: nn.Module, loss: float, score: float, lr: float) -> dict[str, Any]:
        """Append the epoch to the history and keep the model's weights if they are the best yet."""
        epoch = len(self.history)
        entry = {"epoch": epoch, "loss": loss, "val_score": score, "lr": lr}
        self.history.append(entry)
        # On a tie the later epoch: it has trained longer on fresh random fields of view and
        # processing chains, which a saturated phantom validation score cannot show.
        if self.best_weights is None or score >= self.best_score:
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.best_score, self.best_epoch = score, epoch
        return entry


def resume(work_dir: Path, model: nn.Module, optimiser, scheduler) -> FoldState:
    """The fold's saved state, loaded into model/optimiser/scheduler; a fresh one if none is saved."""
    path = work_dir / STATE_FILE
    if not path.exists():
        return FoldState()
    # Our own file (optimiser state holds plain Python objects), never one from elsewhere.
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(saved["model"])
    optimiser.load_state_dict(saved["optimiser"])
    scheduler.load_state_dict(saved["scheduler"])
    return FoldState(saved["best_weights"], saved["best_score"], saved["best_epoch"], saved["history"])


def save(work_dir: Path, model: nn.Module, optimiser, scheduler, state: FoldState) -> None:
    """Write the state atomically: a crash mid-write leaves the previous epoch's file intact."""
    path = work_dir / STATE_FILE
    partial = path.with_suffix(".partial")
    torch.save(
        {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best_weights": state.best_weights,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "history": state.history,
        },
        partial,
    )
    partial.replace(path)
    (work_dir / HISTORY_FILE).write_text(json.dumps(state.history, indent=1))


class FixedSchedule:
    """No scheduler: the training loop sets the learning rate itself, from the epoch and step alone
    (so a resumed fold needs no scheduler state)."""

    def step(self, *_: object) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, _: dict[str, Any]) -> None:
        pass


def run_epochs(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    plateau_patience: int | None,
    work_dir: Path,
    total_epochs: int,
    train_epoch: Callable[[int], float],
    validate: Callable[[], float],
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FoldState:
    """Resume, then run epochs up to ``total_epochs``; the model ends with the best weights.

    ``train_epoch(epoch)`` returns the mean training loss; ``validate()`` the score to maximise.
    ``plateau_patience`` None: the loop keeps the learning rate ``train_epoch`` sets.
    """
    scheduler = (
        FixedSchedule()
        if plateau_patience is None
        else torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, mode="max", factor=0.5, patience=plateau_patience)
    )
    state = resume(work_dir, model, optimiser, scheduler)
    for epoch in range(len(state.history), total_epochs):
        loss = train_epoch(epoch)
        score = validate()
        scheduler.step(score)
        entry = state.record_epoch(model, loss, score, optimiser.param_groups[0]["lr"])
        save(work_dir, model, optimiser, scheduler, state)
        if on_epoch:
            on_epoch(entry)
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    return state
