"""TorchServe handlers for the five models, shared by the thin files in ``services/<task>/``.

This is the only module that touches TorchServe. A handler loads its archive's checkpoint with
:func:`avn.models.checkpoint.load_checkpoint` (which refuses a checkpoint of another task) and
follows TorchServe's usual hooks, each thin: ``preprocess`` decodes every request of a batch with
:mod:`avn.serving.codec`, ``inference`` runs the model's own ``predict`` ONCE over all crops (or
images) of the batch — the same code the in-process backend and training validation run — and
``postprocess`` splits the outputs back per request. A request that does not decode gets its own
400 answer with the reason; the other requests of the same batch are still served.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

from avn.models.checkpoint import DETECTION_TASK, load_checkpoint
from avn.models.classifier import HeadClassifier, HeadPrediction
from avn.models.detector import Detection, FemoralHeadDetector
from avn.serving.codec import (
    CropsRequest,
    WireFormatError,
    classifier_response,
    decode_crops_request,
    decode_image_request,
    detection_response,
    error_response,
)
from avn.serving.oip import CARD, RESPONSE, OipCall, oip_answer, oip_call

logger = logging.getLogger(__name__)

BAD_REQUEST = 400
MAX_REASON_LENGTH = 300  # the reason travels as an HTTP status phrase: one short line
JSON_CONTENT_TYPE = "application/json"


@dataclass
class DecodedBatch:
    """A TorchServe batch after ``preprocess``, by position in the batch: decoded requests, and
    the (already encoded) 400 answers of those that did not decode."""

    requests: dict[int, Any] = field(default_factory=dict)
    rejections: dict[int, str] = field(default_factory=dict)


class AvnHandler(BaseHandler):
    """Common life cycle: load the checkpoint, decode per request, infer per batch, answer per request."""

    task: str = ""  # set by each service's subclass

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        self.manifest = context.manifest
        checkpoint = Path(properties["model_dir"]) / self.manifest["model"]["serializedFile"]
        self.model, self.card = load_checkpoint(checkpoint, map_location=self.device, task=self.task)
        self.model_name = self.manifest["model"].get("modelName", self.task)
        logger.info(
            "loaded %s %s version %s on %s, served as %s",
            self.task,
            self.card.architecture,
            self.card.version,
            self.device,
            getattr(self.model, "form", "fp32"),
        )
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        # BaseHandler.handle, except that requests which do not decode are answered on their own.
        started = time.time()
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        calls, data = self._open_inference_calls(data)
        batch = self.preprocess(data)
        responses: list[Any] = [batch.rejections.get(index) for index in range(len(data))]
        for index, call in calls.items():
            if call is not None and index in batch.rejections:
                # TorchServe's OIP endpoint cannot carry a 400 (it fails the worker): the refusal
                # goes back as the answer, as TorchServe's own gRPC API delivers one
                self.context.set_response_status(200, "OK", index)
                responses[index] = oip_answer(
                    call, self.model_name, self.card.version, RESPONSE, batch.rejections[index]
                )
            elif call is not None and call.describes:
                responses[index] = oip_answer(call, self.model_name, self.card.version, CARD, self.describe_handle())
                batch.requests.pop(index, None)
        if batch.requests:
            answers = self.infer(list(batch.requests.values()))
            logger.info("%s: one forward pass over %d request(s) of a batch of %d", self.task, len(answers), len(data))
            for index, answer in zip(batch.requests, answers, strict=True):
                # The batch TorchServe formed is only known here: the gateway's traces show it.
                responses[index] = _compact_json({**answer, "batch_size": len(answers)})
                context.set_response_content_type(index, JSON_CONTENT_TYPE)
                if calls.get(index) is not None:
                    responses[index] = oip_answer(
                        calls[index], self.model_name, self.card.version, RESPONSE, responses[index]
                    )
        context.metrics.add_time("HandlerTime", round((time.time() - started) * 1000, 2), None, "ms")
        return responses

    def _open_inference_calls(
        self, data: list[dict[str, Any]]
    ) -> tuple[dict[int, OipCall | None], list[dict[str, Any]]]:
        """Open Inference Protocol requests (:mod:`avn.serving.oip`) turned into the usual form; a
        describe call becomes a request that decodes to nothing (answered with the card)."""
        calls: dict[int, OipCall | None] = {}
        usual = []
        for index, request in enumerate(data):
            try:
                call = oip_call(request.get("body") if request.get("body") is not None else request.get("data"))
                calls[index] = call
                if call is None:
                    usual.append(request)
                elif call.describes:
                    usual.append({"describe": True})
                else:
                    usual.append(call.as_wire_request())
            except WireFormatError as error:
                calls[index] = OipCall("", {})
                usual.append({"oip_error": str(error)})
        return calls, usual

    def describe_handle(self) -> str:
        """The model card, for ``GET /models/<name>?customized=true``."""
        return json.dumps({"model": self.model_name, **self.card.to_dict()})

    def preprocess(self, data: list[dict[str, Any]]) -> DecodedBatch:
        """Every request decoded on its own, so that a bad one cannot fail the others."""
        batch = DecodedBatch()
        for index, request in enumerate(data):
            try:
                if "oip_error" in request:
                    raise WireFormatError(request["oip_error"])
                if request.get("describe"):
                    batch.requests[index] = None  # answered with the card, never decoded
                    continue
                batch.requests[index] = self.decode(request)
            except WireFormatError as error:
                batch.rejections[index] = self._reject(index, error)
        return batch

    def infer(self, requests: list[Any]) -> list[dict[str, Any]]:
        """The answers to decoded requests, from one forward pass over all of them."""
        return self.postprocess(self.inference(requests))

    def decode(self, request: dict[str, Any]) -> Any:
        raise NotImplementedError

    def inference(self, requests: list[Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def postprocess(self, outputs: Any) -> list[dict[str, Any]]:
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

    def inference(
        self, requests: list[CropsRequest], *args: Any, **kwargs: Any
    ) -> tuple[list[CropsRequest], HeadPrediction]:
        model: HeadClassifier = self.model
        crops = np.concatenate([request.crops for request in requests])
        cam_classes = _requested_cam_stages(requests) if self.returns_cams else None
        return requests, model.predict(crops, cam_classes)

    def postprocess(self, outputs: tuple[list[CropsRequest], HeadPrediction]) -> list[dict[str, Any]]:
        requests, prediction = outputs
        return [self._answer(prediction, rows) for rows in _rows_per_request(requests)]

    def _answer(self, prediction: HeadPrediction, rows: slice) -> dict[str, Any]:
        return classifier_response(
            self.model_name,
            self.card.version,
            self.card.labels,
            prediction.probabilities[rows],
            self.model.multi_label,
            cams=None if prediction.cams is None else prediction.cams[rows],
            cam_classes=None if prediction.cam_classes is None else prediction.cam_classes[rows],
        )


def _requested_cam_stages(requests: list[CropsRequest]) -> list[str | None]:
    """Per crop, the stage its request asked the CAM of (None: the predicted stage)."""
    return [request.cam_stage for request in requests for _ in range(len(request.crops))]


def _rows_per_request(requests: list[CropsRequest]) -> list[slice]:
    """Each request's rows in the batch its crops were concatenated into."""
    ends = np.cumsum([len(request.crops) for request in requests]).tolist()
    return [slice(end - len(request.crops), end) for request, end in zip(requests, ends, strict=True)]


class DetectionHandler(AvnHandler):
    """Radiographs in, femoral-head boxes in each radiograph's own pixel coordinates out."""

    task = DETECTION_TASK

    def decode(self, request: dict[str, Any]) -> np.ndarray:
        return decode_image_request(request_body(request))

    def inference(
        self, images: list[np.ndarray], *args: Any, **kwargs: Any
    ) -> tuple[list[np.ndarray], list[Detection]]:
        model: FemoralHeadDetector = self.model
        return images, model.predict(images)

    def postprocess(self, outputs: tuple[list[np.ndarray], list[Detection]]) -> list[dict[str, Any]]:
        images, detections = outputs
        return [
            detection_response(self.model_name, self.card.version, image.shape, found.boxes, found.scores)
            for image, found in zip(images, detections, strict=True)
        ]
