"""The four femoral-head classifiers (SPEC §2.3): a ResNet-18 on one grey crop per head.

View, side, staging and notes share one architecture, :class:`HeadClassifier`; they differ only in
their label set and in whether the labels are exclusive (softmax) or independent (sigmoid, notes).
The staging model also explains itself with class activation maps computed from the last
convolutional features and the fc weights of the same forward pass. Plain PyTorch: the serving
layer wraps these modules, nothing here knows about TorchServe.

:meth:`HeadClassifier.predict` is the one inference path — input normalisation, forward pass,
probabilities, CAMs — shared by the TorchServe handlers, the in-process backend and training
validation, so that what is validated is exactly what is served.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet18

from avn.pipeline.crop import normalise
from avn.vocabulary import NOTES, SIDES, STAGES, VIEWS

CLASSIFIER_TASKS: dict[str, tuple[str, ...]] = {
    "view": VIEWS,
    "side": SIDES,
    "staging": STAGES,
    "notes": NOTES,
}
MULTI_LABEL_TASKS: frozenset[str] = frozenset({"notes"})
ARCHITECTURE = "resnet18"

# The classifier head; everything else is the transferable trunk (SPEC: staging starts from view).
_HEAD_PREFIX = "backbone.fc."


class UnknownTaskError(ValueError):
    """A task name that is not one of :data:`CLASSIFIER_TASKS`."""


class IncompatibleWeightsError(ValueError):
    """Source weights that do not fit the target model's trunk."""


def normalised_batch(crops: np.ndarray) -> torch.Tensor:
    """(B, S, S) crops in [0, 1] → the model input: (B, 1, S, S), normalised crop by crop, on the CPU.

    Training batches go through here too, so a model only ever sees inputs prepared one way.
    """
    return torch.from_numpy(np.stack([normalise(crop) for crop in crops]))[:, None]


@dataclass(frozen=True)
class HeadPrediction:
    """What :meth:`HeadClassifier.predict` returns for a batch of crops, in the model's label order."""

    probabilities: np.ndarray  # (B, C): softmax rows, or independent sigmoids for multi-label tasks
    cams: np.ndarray | None = None  # (B, h, w) in [0, 1], when CAMs were asked for
    cam_classes: tuple[int, ...] | None = None  # per crop, the label index its CAM explains


class HeadClassifier(nn.Module):
    """ResNet-18 over (B, 1, S, S) crops normalised by :func:`avn.pipeline.crop.normalise`; returns logits."""

    def __init__(self, labels: Sequence[str], multi_label: bool = False, task: str | None = None) -> None:
        super().__init__()
        if not labels:
            raise ValueError("a classifier needs at least one label")
        self.task = task
        self.labels: tuple[str, ...] = tuple(labels)
        self.multi_label = multi_label
        # Temperature for calibrated probabilities; set from the model card when loaded for serving.
        self.temperature: float = 1.0
        # The forward pass serving uses (avn.models.acceleration: int8, bf16...); None: fp32 eager.
        self.runner: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
        self.form: str = "fp32"
        self.backbone = resnet18(weights=None, num_classes=len(self.labels))
        # Radiographs are grey: a 1-channel stem instead of replicating the crop three times.
        self.backbone.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.backbone.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, _ = self.forward_features(x)
        return logits

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the last conv feature maps (B, 512, h, w) from one pass through the network."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected crops shaped (B, 1, S, S), got {tuple(x.shape)}")
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        feature_maps = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        logits = net.fc(torch.flatten(net.avgpool(feature_maps), 1))
        return logits, feature_maps

    def class_activation_maps(
        self, feature_maps: torch.Tensor, class_indices: torch.Tensor | Sequence[int]
    ) -> torch.Tensor:
        """CAM_c = Σ_k w[c, k]·F_k for one class per sample, ReLU'd and scaled to [0, 1]: (B, h, w).

        Scaling divides by each map's maximum so that 0 keeps meaning "no evidence"; an all-zero
        map stays zero.
        """
        indices = torch.as_tensor(class_indices, dtype=torch.long, device=feature_maps.device).reshape(-1)
        if indices.numel() != feature_maps.shape[0]:
            raise ValueError(f"{indices.numel()} class indices for {feature_maps.shape[0]} feature maps")
        if indices.numel() and (indices.min() < 0 or indices.max() >= len(self.labels)):
            raise ValueError(f"class index out of range 0..{len(self.labels) - 1}")
        weights = self.backbone.fc.weight[indices]  # (B, 512)
        cams = torch.relu(torch.einsum("bk,bkhw->bhw", weights, feature_maps))
        peaks = cams.amax(dim=(1, 2), keepdim=True)
        return torch.where(peaks > 0, cams / peaks.clamp_min(torch.finfo(cams.dtype).tiny), cams)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over exclusive labels, sigmoid per label for multi-label tasks (temperature-scaled)."""
        scaled = logits / self.temperature
        return torch.sigmoid(scaled) if self.multi_label else torch.softmax(scaled, dim=1)

    def predict(self, crops: np.ndarray, cam_classes: Sequence[str | None] | None = None) -> HeadPrediction:
        """Probabilities (and CAMs) of (B, S, S) crops in [0, 1], in one forward pass (call in eval mode).

        ``cam_classes`` asks for one CAM per crop: the label to explain, or None for the crop's
        predicted label. Without it no CAM is computed.
        """
        return self.predict_normalised(normalised_batch(np.asarray(crops)), cam_classes)

    @torch.inference_mode()
    def predict_normalised(
        self, batch: torch.Tensor, cam_classes: Sequence[str | None] | None = None
    ) -> HeadPrediction:
        """:meth:`predict` on crops already through :func:`normalised_batch` (B, 1, S, S), any device."""
        if self.training:
            # Batch norm would use (and update) the batch statistics: not what was validated or served.
            raise RuntimeError("HeadClassifier.predict is inference; call .eval() first")
        logits, feature_maps = (self.runner or self.forward_features)(batch.to(self._device()))
        probabilities = self.probabilities(logits)
        if cam_classes is None:
            return HeadPrediction(probabilities.cpu().numpy())
        explained = self._explained_classes(cam_classes, probabilities)
        cams = self.class_activation_maps(feature_maps, explained)
        return HeadPrediction(probabilities.cpu().numpy(), cams.cpu().numpy(), tuple(explained.tolist()))

    def _explained_classes(self, cam_classes: Sequence[str | None], probabilities: torch.Tensor) -> torch.Tensor:
        """Per crop, the index of the requested label, else of the predicted one."""
        if len(cam_classes) != len(probabilities):
            raise ValueError(f"{len(cam_classes)} CAM classes for {len(probabilities)} crops")
        explained = probabilities.argmax(dim=1)
        for row, label in enumerate(cam_classes):
            if label is None:
                continue
            if label not in self.labels:
                raise ValueError(f"no CAM for {label!r}: not one of the labels {self.labels}")
            explained[row] = self.labels.index(label)
        return explained

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def build_classifier(task: str) -> HeadClassifier:
    """A freshly initialised classifier for ``task`` (one of :data:`CLASSIFIER_TASKS`)."""
    if task not in CLASSIFIER_TASKS:
        raise UnknownTaskError(f"unknown classifier task {task!r}; expected one of {tuple(CLASSIFIER_TASKS)}")
    return HeadClassifier(CLASSIFIER_TASKS[task], multi_label=task in MULTI_LABEL_TASKS, task=task)


def init_from(model: HeadClassifier, source_state_dict: Mapping[str, torch.Tensor] | nn.Module) -> list[str]:
    """Copy every weight and buffer except the fc layer from ``source_state_dict`` into ``model``.

    The staging model starts from the trained view model this way (the fc layers differ in size).
    Returns the copied keys; raises :class:`IncompatibleWeightsError` when the trunk does not match.
    """
    source = source_state_dict.state_dict() if isinstance(source_state_dict, nn.Module) else source_state_dict
    target = model.state_dict()
    trunk_keys = [key for key in target if not key.startswith(_HEAD_PREFIX)]
    missing = [key for key in trunk_keys if key not in source]
    mismatched = [
        f"{key}: {tuple(source[key].shape)} vs {tuple(target[key].shape)}"
        for key in trunk_keys
        if key in source and source[key].shape != target[key].shape
    ]
    if missing or mismatched:
        raise IncompatibleWeightsError(
            f"source weights do not fit the classifier trunk; missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, mismatched {mismatched[:5]}"
        )
    with torch.no_grad():
        for key in trunk_keys:
            target[key].copy_(source[key])
    return trunk_keys
