"""Checkpoints: the one file format that carries a trained model from training to serving.

A checkpoint is ``torch.save`` of a plain dict — the state dict, the arguments that rebuild the
module and a :class:`ModelCard` as a dict — so it loads with ``torch.load(weights_only=True)``:
opening a model file never executes pickled code. The card is what the TorchServe handlers report
(version, input size, labels, training-data hash, T-set metrics).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avn.models.acceleration import (
    BF16,
    CHANNELS_LAST,
    FP16,
    FP32,
    INT8,
    FormError,
    cpu_has_bf16,
    int8_available,
    int8_from_state,
    serve_as,
    serve_detector_as,
)
from avn.models.classifier import ARCHITECTURE, CLASSIFIER_TASKS, HeadClassifier, build_classifier
from avn.models.detector import DETECTOR_BACKBONES, FemoralHeadDetector, build_detector
from avn.pipeline.crop import INPUT_SIZE

logger = logging.getLogger(__name__)

DETECTION_TASK = "detection"
TASKS: tuple[str, ...] = (DETECTION_TASK, *CLASSIFIER_TASKS)
CHECKPOINT_FORMAT = "avn-checkpoint/1"
METADATA_KEYS = frozenset(
    {
        "version",
        "training_data_hash",
        "metrics",
        "created",
        "temperature",
        "input_size",
        "extra",
        "operating_points",
        "optimisation",
    }
)
# The form's record describes these exact weights: a card rewritten with new ones drops it.
NOT_CARRIED_ON_REWRITE = frozenset({"optimisation"})
INT8_STATE_KEY = "int8_state_dict"
REQUIRED_METADATA = ("version", "training_data_hash")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read as asked (wrong task, model, metadata or file)."""


class ModelTaskMismatchError(CheckpointError):
    """A checkpoint of another task than the one asked for (a view model in the staging archive)."""


@dataclass(frozen=True)
class ModelCard:
    """What a served model says about itself."""

    task: str  # "detection" | "view" | "side" | "staging" | "notes"
    architecture: str  # "resnet18" or the detector backbone
    labels: tuple[str, ...]
    input_size: int  # crop side (classifiers) or detector input side, pixels
    version: str
    training_data_hash: str
    metrics: dict[str, Any] = field(default_factory=dict)  # e.g. T-set metrics
    created: str = ""  # ISO 8601, UTC
    temperature: float = 1.0  # logits are divided by it before softmax / sigmoid
    extra: dict[str, Any] = field(default_factory=dict)  # anything else training wants to record
    # Staging only: name -> {threshold, sensitivity, specificity, target} on presence, chosen on the
    # validation fold (avn/operating_points.py); empty for the other models and for older cards.
    operating_points: dict[str, Any] = field(default_factory=dict)
    # The served form chosen by `avn build-store` (avn.models.acceleration.FormChoice.card_record):
    # form, CUDA form, per-form speed and AUC against fp32; empty: fp32, not checked.
    optimisation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        card = asdict(self)
        card["labels"] = list(self.labels)
        return card

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"model card has unknown fields {sorted(unknown)}")
        try:
            card = cls(**{**data, "labels": tuple(data["labels"])})
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"incomplete model card: {error}") from error
        if card.task not in TASKS:
            raise CheckpointError(f"model card names unknown task {card.task!r}; expected one of {TASKS}")
        return card


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    task: str,
    metadata: Mapping[str, Any],
    int8_state: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Write ``model`` for ``task`` with ``metadata`` (version, training_data_hash, [metrics,
    created, temperature, extra, optimisation]) to ``path`` atomically; returns the card written.

    ``int8_state``: the quantised trunk the card's int8 form serves (avn.models.acceleration).
    """
    config = _rebuild_config(model, task)
    card = _card_for(model, task, metadata)
    if (card.optimisation.get("form") == INT8) != (int8_state is not None):
        raise CheckpointError("an int8 form needs its quantised weights, and quantised weights need the int8 form")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "card": card.to_dict(),
        "config": config,
        "state_dict": {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()},
    }
    if int8_state is not None:
        payload[INT8_STATE_KEY] = dict(int8_state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    # A crash mid-write must never leave a truncated model.pt that a resumed run would trust.
    os.replace(partial, path)
    return card


def rewrite_card(path: str | Path, model: nn.Module, card: ModelCard, **changes: Any) -> ModelCard:
    """Save ``model`` to ``path`` again under ``card`` with ``changes`` (a new version, temperature,
    operating points…): every other field of the card is carried over, so a later step (calibration
    after operating points, or the reverse) never drops what an earlier one wrote."""
    metadata = {key: getattr(card, key) for key in METADATA_KEYS - NOT_CARRIED_ON_REWRITE}
    return save_checkpoint(path, model, card.task, {**metadata, **changes})


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", task: str | None = None, optimised: bool = True
) -> tuple[nn.Module, ModelCard]:
    """The model rebuilt from ``path`` in eval mode, and its card.

    With ``task`` (what a TorchServe handler or the in-process backend serves), a checkpoint of
    any other task is refused with :class:`ModelTaskMismatchError` before its weights are built.
    A classifier whose card names a served form (a model-store checkpoint) answers through it on
    ``map_location``'s device; ``optimised=False`` keeps the fp32 model.
    """
    payload = _read_payload(path, map_location)
    card = ModelCard.from_dict(payload["card"])
    if task is not None and card.task != task:
        raise ModelTaskMismatchError(f"{path} holds a {card.task!r} model, expected {task!r}")
    model = _rebuild_model(card, payload.get("config", {}))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit a {card.architecture} {card.task} model: {error}") from error
    model = model.to(map_location).eval()
    if isinstance(model, HeadClassifier):
        model.temperature = card.temperature
    if optimised and card.optimisation:
        _serve_chosen_form(model, card, payload.get(INT8_STATE_KEY), torch.device(map_location))
    return model, card


def _serve_chosen_form(
    model: nn.Module, card: ModelCard, int8_state: Mapping[str, Any] | None, device: torch.device
) -> None:
    """Switch ``model`` to the form its card chose for this kind of device; a form this machine
    cannot run falls back to one with fp32 arithmetic (logged), never to an unchecked one."""
    chosen = card.optimisation.get("cuda_form" if device.type == "cuda" else "form", FP32)
    form = chosen
    if device.type == "cuda" and chosen not in (FP16, FP32):
        form = FP32
    elif chosen == INT8 and (int8_state is None or not int8_available()):
        form = CHANNELS_LAST
    elif chosen == BF16 and not cpu_has_bf16():
        form = CHANNELS_LAST
    if form != chosen:
        logger.warning("%s: form %s cannot run here (%s); serving %s", card.task, chosen, device, form)
    try:
        if isinstance(model, FemoralHeadDetector):
            serve_detector_as(model, form)
        else:
            serve_as(model, form, int8_from_state(model, int8_state) if form == INT8 else None)
    except FormError as error:
        raise CheckpointError(f"{card.task}: {error}") from error


def read_card(path: str | Path) -> ModelCard:
    """The card of a checkpoint, without building the model."""
    return ModelCard.from_dict(_read_payload(path, "cpu")["card"])


def _read_payload(path: str | Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several unrelated types for a corrupt file
        raise CheckpointError(f"{path} is not a readable checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an {CHECKPOINT_FORMAT} file")
    return payload


def _rebuild_config(model: nn.Module, task: str) -> dict[str, Any]:
    """The build arguments of ``model``, after checking that it is a model for ``task``."""
    if task not in TASKS:
        raise CheckpointError(f"unknown task {task!r}; expected one of {TASKS}")
    if task == DETECTION_TASK:
        if not isinstance(model, FemoralHeadDetector):
            raise CheckpointError(f"task 'detection' needs a FemoralHeadDetector, got {type(model).__name__}")
        return dict(model.config)
    if not isinstance(model, HeadClassifier):
        raise CheckpointError(f"task {task!r} needs a HeadClassifier, got {type(model).__name__}")
    if model.labels != CLASSIFIER_TASKS[task]:
        raise CheckpointError(f"model labels {model.labels} are not the {task!r} labels {CLASSIFIER_TASKS[task]}")
    return {"task": task}


def _rebuild_model(card: ModelCard, config: Mapping[str, Any]) -> nn.Module:
    if card.task == DETECTION_TASK:
        if card.architecture not in DETECTOR_BACKBONES:
            raise CheckpointError(f"unknown detector backbone {card.architecture!r}")
        try:  # a card's labels say whether the detector knows the prosthesis class (older ones do not)
            return build_detector(**{**config, "backbone": card.architecture, "labels": card.labels})
        except ValueError as error:
            raise CheckpointError(str(error)) from error
    model = build_classifier(card.task)
    if model.labels != card.labels:
        # The vocabulary changed since training: indices would silently mean other labels.
        raise CheckpointError(f"checkpoint labels {card.labels} differ from the current vocabulary {model.labels}")
    return model


def _card_for(model: nn.Module, task: str, metadata: Mapping[str, Any]) -> ModelCard:
    unknown = set(metadata) - METADATA_KEYS
    if unknown:
        raise CheckpointError(
            f"unknown metadata keys {sorted(unknown)}; allowed: {sorted(METADATA_KEYS)} (put the rest in 'extra')"
        )
    missing = [key for key in REQUIRED_METADATA if not metadata.get(key)]
    if missing:
        raise CheckpointError(f"metadata lacks {missing}")
    temperature = float(metadata.get("temperature", 1.0))
    if not (math.isfinite(temperature) and temperature > 0):
        raise CheckpointError(f"temperature must be a positive number, got {temperature}")
    if isinstance(model, FemoralHeadDetector):
        architecture, labels, input_size = model.backbone_name, model.labels, model.input_size
    else:
        # The crop side a classifier was trained on (profiles differ); serving must send that size.
        architecture, labels, input_size = ARCHITECTURE, model.labels, metadata.get("input_size", INPUT_SIZE)
    return ModelCard(
        task=task,
        architecture=architecture,
        labels=tuple(labels),
        input_size=int(input_size),
        version=str(metadata["version"]),
        training_data_hash=str(metadata["training_data_hash"]),
        metrics=_plain(metadata.get("metrics", {})),
        created=str(metadata.get("created") or datetime.now(UTC).isoformat(timespec="seconds")),
        temperature=temperature,
        extra=_plain(metadata.get("extra", {})),
        operating_points=_plain(metadata.get("operating_points", {})),
        optimisation=_plain(metadata.get("optimisation", {})),
    )


def _plain(value: Any) -> Any:
    """``value`` as built-in Python types only: what ``weights_only`` loading accepts."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot store metadata value of type {type(value).__name__}: {value!r}")
