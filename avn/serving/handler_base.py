"""TorchServe handlers for the five models, shared by the thin files in ``services/<task>/``.

This is the only module that touches TorchServe. A handler loads its archive's checkpoint with
:func:`avn.models.checkpoint.load_checkpoint`, decodes every request of a TorchServe batch with
:mod:`avn.serving.codec`, runs ONE forward pass over all crops (or images) of the batch, and
splits the outputs back per request. A request that does not decode gets its own 400 answer with
the reason; the other requests of the same batch are still served.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

from avn.models.checkpoint import DETECTION_TASK, load_checkpoint
from avn.models.classifier import HeadClassifier
from avn.models.detector import FemoralHeadDetector
from avn.pipeline.crop import normalise
from avn.serving.codec import (
    CropsRequest,
    WireFormatError,
    classifier_response,
    decode_crops_request,
    decode_image_request,
    detection_response,
    error_response,
)

logger = logging.getLogger(__name__)

BAD_REQUEST = 400
MAX_REASON_LENGTH = 300  # the reason travels as an HTTP status phrase: one short line
JSON_CONTENT_TYPE = "application/json"


class ModelTaskMismatchError(RuntimeError):
    """An archive whose checkpoint is for another task than its handler."""


class AvnHandler(BaseHandler):
    """Common life cycle: load the checkpoint, decode per request, infer per batch, answer per request."""

    task: str = ""  # set by each service's subclass

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        self.manifest = context.manifest
        checkpoint = Path(properties["model_dir"]) / self.manifest["model"]["serializedFile"]
        self.model, self.card = load_checkpoint(checkpoint, map_location=self.device)
        if self.card.task != self.task:
            raise ModelTaskMismatchError(
                f"{checkpoint} holds a {self.card.task!r} model, this handler serves {self.task!r}"
            )
        self.model_name = self.manifest["model"].get("modelName", self.task)
        logger.info("loaded %s %s version %s on %s", self.task, self.card.architecture, self.card.version, self.device)
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        started = time.time()
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        responses: list[Any] = [None] * len(data)
        decoded: dict[int, Any] = {}
        for index, request in enumerate(data):
            try:
                decoded[index] = self.decode(request)
            except WireFormatError as error:
                responses[index] = self._reject(index, error)
        if decoded:
            with torch.inference_mode():
                answers = self.infer(list(decoded.values()))
            logger.info("%s: one forward pass over %d request(s) of a batch of %d", self.task, len(decoded), len(data))
            for index, answer in zip(decoded, answers, strict=False):
                responses[index] = _compact_json(answer)
                context.set_response_content_type(index, JSON_CONTENT_TYPE)
        context.metrics.add_time("HandlerTime", round((time.time() - started) * 1000, 2), None, "ms")
        return responses

    def describe_handle(self) -> str:
        """The model card, for ``GET /models/<name>?customized=true``."""
        return json.dumps({"model": self.model_name, **self.card.to_dict()})

    def decode(self, request: dict[str, Any]) -> Any:
        raise NotImplementedError

    def infer(self, requests: list[Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _reject(self, index: int, error: WireFormatError) -> str:
        reason = " ".join(str(error).split())[:MAX_REASON_LENGTH]
        logger.warning("rejected request %d: %s", index, reason)
        self.context.set_response_status(BAD_REQUEST, reason, index)
        self.context.set_response_content_type(index, JSON_CONTENT_TYPE)
        return _compact_json(error_response(BAD_REQUEST, error))


def _compact_json(answer: dict[str, Any]) -> str:
    # TorchServe would indent a dict; CAM grids make that several times larger on the wire.
    return json.dumps(answer, separators=(",", ":"))


def request_body(request: dict[str, Any]) -> Any:
    """The payload of one TorchServe request: ``body`` for a raw POST, ``data`` for form/gRPC input."""
    for key in ("body", "data"):
        if request.get(key) is not None:
            return request[key]
    raise WireFormatError(f"empty request: no body or 'data' field (fields: {sorted(request)})")


class ClassifierHandler(AvnHandler):
    """View, side, staging or notes: crops in, probabilities and predictions out."""

    returns_cams: bool = False  # staging explains itself with class activation maps

    def decode(self, request: dict[str, Any]) -> CropsRequest:
        decoded = decode_crops_request(request_body(request), self.card.input_size, cam_stage=request.get("cam_stage"))
        if decoded.cam_stage is not None and not self.returns_cams:
            raise WireFormatError(f"cam_stage applies to the staging model only, not to {self.task!r}")
        return decoded

    def infer(self, requests: list[CropsRequest]) -> list[dict[str, Any]]:
        model: HeadClassifier = self.model
        crops = np.concatenate([request.crops for request in requests])
        batch = torch.from_numpy(np.stack([normalise(crop) for crop in crops])[:, np.newaxis]).to(self.device)
        logits, feature_maps = model.forward_features(batch)
        probabilities = model.probabilities(logits)
        cams, cam_classes = None, None
        if self.returns_cams:
            cam_classes = self._cam_classes(requests, probabilities)
            cams = model.class_activation_maps(feature_maps, cam_classes).cpu().numpy()
            cam_classes = cam_classes.tolist()
        probabilities = probabilities.cpu().numpy()
        answers, start = [], 0
        for request in requests:
            stop = start + len(request.crops)
            answers.append(
                classifier_response(
                    self.model_name,
                    self.card.version,
                    self.card.labels,
                    probabilities[start:stop],
                    model.multi_label,
                    cams=None if cams is None else cams[start:stop],
                    cam_classes=None if cam_classes is None else cam_classes[start:stop],
                )
            )
            start = stop
        return answers

    def _cam_classes(self, requests: list[CropsRequest], probabilities: torch.Tensor) -> torch.Tensor:
        """Per crop: the requested stage's index, else the predicted one."""
        chosen = probabilities.argmax(dim=1)
        start = 0
        for request in requests:
            stop = start + len(request.crops)
            if request.cam_stage is not None:
                chosen[start:stop] = self.card.labels.index(request.cam_stage)
            start = stop
        return chosen


class DetectionHandler(AvnHandler):
    """Radiographs in, femoral-head boxes in each radiograph's own pixel coordinates out."""

    task = DETECTION_TASK

    def decode(self, request: dict[str, Any]) -> np.ndarray:
        return decode_image_request(request_body(request))

    def infer(self, requests: list[np.ndarray]) -> list[dict[str, Any]]:
        model: FemoralHeadDetector = self.model
        detections = model(requests)
        return [
            detection_response(self.model_name, self.card.version, image.shape, found.boxes, found.scores)
            for image, found in zip(requests, detections, strict=True)
        ]
