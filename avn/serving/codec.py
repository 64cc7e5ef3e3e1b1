"""The wire format of the five model services: request decoding and response building.

Independent of TorchServe, so that the gateway, the tests and any other server speak exactly the
same format. ``services/README.md`` documents it for integrators.

Classifier requests carry un-normalised crops in [0, 1] (the server normalises each crop with
:func:`avn.pipeline.crop.normalise`, so every client gets identical preprocessing):

* raw ``.npy`` bytes (``np.save``) of float crops shaped (N, S, S) or (S, S); or
* JSON ``{"crops": "<base64 of those .npy bytes>", "cam_stage": "III"}`` (``cam_stage`` optional,
  staging only: the stage whose activation map is returned instead of the predicted one's).

Detection requests carry one radiograph: ``.npy`` bytes of a float (H, W) image in [0, 1], or a
PNG (8- or 16-bit, grey or colour; colour is converted to grey).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from avn.pipeline.decode import MIN_IMAGE_SIDE, PNG_MAGIC
from avn.vocabulary import STAGES

NPY_MAGIC = b"\x93NUMPY"
MAX_CROPS_PER_REQUEST = 64

MAX_IMAGE_PIXELS = 50_000_000  # above any radiograph detector (3000×3000 is 9 Mpx)
RANGE_TOLERANCE = 1e-3  # float rounding in clients' rescaling, not a different convention
JSON_FIELDS = frozenset({"crops", "cam_stage"})
DECIMALS = 6
CAM_DECIMALS = 4


class WireFormatError(ValueError):
    """A request body the services cannot read; the message tells the client what is wrong."""


@dataclass(frozen=True)
class CropsRequest:
    """A decoded classifier request."""

    crops: np.ndarray  # (N, S, S) float32 in [0, 1]
    cam_stage: str | None = None


# ---------------------------------------------------------------- requests


def decode_crops_request(payload: Any, input_size: int, cam_stage: Any = None) -> CropsRequest:
    """A classifier request from a raw body (bytes, or a JSON body TorchServe already parsed).

    ``cam_stage`` is the optional stage sent as a separate field (gRPC input or form field); a
    JSON body may carry it too, but not both.
    """
    body = _as_json_if_json(payload)
    if isinstance(body, Mapping):
        crops_bytes, body_stage = _crops_from_json(body)
        if body_stage is not None and cam_stage is not None:
            raise WireFormatError("cam_stage given twice (in the JSON body and as a separate field)")
        cam_stage = body_stage if body_stage is not None else cam_stage
    elif isinstance(body, (bytes, bytearray)):
        crops_bytes = bytes(body)
    else:
        raise WireFormatError(f"expected .npy bytes or a JSON object, got {type(body).__name__}")
    crops = _validated_crops(_load_npy(crops_bytes, "crops"), input_size)
    return CropsRequest(crops=crops, cam_stage=_validated_stage(cam_stage))


def decode_image_request(payload: Any) -> np.ndarray:
    """A detection request: the radiograph as a float32 (H, W) array in [0, 1]."""
    if not isinstance(payload, (bytes, bytearray)):
        raise WireFormatError(f"expected .npy or PNG bytes of one radiograph, got {type(payload).__name__}")
    data = bytes(payload)
    if data.startswith(NPY_MAGIC):
        image = _load_npy(data, "image")
        if not np.issubdtype(image.dtype, np.floating):
            raise WireFormatError(f"a .npy image must be float in [0, 1], got dtype {image.dtype}")
        image = image.astype(np.float32)
        _check_unit_range(image, "image")
        image = image.clip(0.0, 1.0)
    elif data.startswith(PNG_MAGIC):
        image = _decode_png(data)
    else:
        raise WireFormatError(f"body is neither .npy nor PNG (starts with {data[:8]!r}, {len(data)} bytes)")
    _check_image_shape(image)
    return image


def _as_json_if_json(payload: Any) -> Any:
    """Parse bodies that are JSON text; TorchServe hands JSON bodies over already parsed."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if isinstance(payload, (bytes, bytearray)) and bytes(payload[:64]).lstrip().startswith(b"{"):
        try:
            return json.loads(bytes(payload))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise WireFormatError(f"body looks like JSON but does not parse: {error}") from error
    return payload


def _crops_from_json(body: Mapping[str, Any]) -> tuple[bytes, Any]:
    unknown = set(body) - JSON_FIELDS
    if unknown:
        raise WireFormatError(f"unknown JSON fields {sorted(unknown)}; allowed: {sorted(JSON_FIELDS)}")
    encoded = body.get("crops")
    if not isinstance(encoded, str):
        raise WireFormatError('JSON body needs "crops": base64 of .npy bytes')
    try:
        return base64.b64decode(encoded, validate=True), body.get("cam_stage")
    except (binascii.Error, ValueError) as error:
        raise WireFormatError(f'"crops" is not valid base64: {error}') from error


def _load_npy(data: bytes, what: str) -> np.ndarray:
    if not data.startswith(NPY_MAGIC):
        raise WireFormatError(f"{what}: body is not .npy bytes (np.save); starts with {data[:8]!r}, {len(data)} bytes")
    try:
        # allow_pickle=False: a request body must never run code on the server.
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise WireFormatError(f"{what}: not a readable .npy array: {error}") from error


def _validated_crops(crops: np.ndarray, input_size: int) -> np.ndarray:
    if not np.issubdtype(crops.dtype, np.floating):
        raise WireFormatError(f"crops must be float in [0, 1], got dtype {crops.dtype}")
    if crops.ndim == 2:
        crops = crops[np.newaxis]
    if crops.ndim != 3 or crops.shape[1:] != (input_size, input_size):
        raise WireFormatError(
            f"crops must be shaped (N, {input_size}, {input_size}) or ({input_size}, {input_size}), got {crops.shape}"
        )
    if not 1 <= crops.shape[0] <= MAX_CROPS_PER_REQUEST:
        raise WireFormatError(f"a request carries 1..{MAX_CROPS_PER_REQUEST} crops, got {crops.shape[0]}")
    crops = crops.astype(np.float32)
    _check_unit_range(crops, "crops")
    return crops.clip(0.0, 1.0)


def _check_unit_range(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise WireFormatError(f"{what}: NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise WireFormatError(
            f"{what}: values must be un-normalised, in [0, 1], got [{low:.3g}, {high:.3g}] "
            "(the server normalises; do not send normalised or 0-255 data)"
        )


def _validated_stage(stage: Any) -> str | None:
    if stage is None:
        return None
    if isinstance(stage, (bytes, bytearray)):
        stage = bytes(stage).decode("utf-8", errors="replace")
    if stage not in STAGES:
        raise WireFormatError(f"cam_stage {stage!r} is not a stage; expected one of {STAGES}")
    return stage


def _decode_png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise WireFormatError("PNG body does not decode")
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    full_scale = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    return (image.astype(np.float32) / full_scale).clip(0.0, 1.0)


def _check_image_shape(image: np.ndarray) -> None:
    if image.ndim != 2:
        raise WireFormatError(f"the radiograph must be one grey (H, W) image, got shape {image.shape}")
    if min(image.shape) < MIN_IMAGE_SIDE or image.size > MAX_IMAGE_PIXELS:
        raise WireFormatError(
            f"radiograph size {image.shape} outside {MIN_IMAGE_SIDE} px per side .. {MAX_IMAGE_PIXELS} pixels"
        )


# ---------------------------------------------------------------- client side


def encode_npy(array: np.ndarray) -> bytes:
    """``np.save`` bytes of ``array`` — the binary request body."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_crops_json(crops: np.ndarray, cam_stage: str | None = None) -> bytes:
    """The JSON request body: base64 .npy crops and, for staging, the stage whose CAM is wanted."""
    body: dict[str, Any] = {"crops": base64.b64encode(encode_npy(crops.astype(np.float32))).decode("ascii")}
    if cam_stage is not None:
        body["cam_stage"] = _validated_stage(cam_stage)
    return json.dumps(body).encode("utf-8")


# ---------------------------------------------------------------- responses


def classifier_response(
    model: str,
    version: str,
    labels: Sequence[str],
    probabilities: np.ndarray,
    multi_label: bool,
    cams: np.ndarray | None = None,
    cam_classes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One request's answer: probabilities and predictions per crop, CAMs for staging."""
    response: dict[str, Any] = {
        "model": model,
        "version": version,
        "labels": list(labels),
        "probabilities": np.round(probabilities.astype(np.float64), DECIMALS).tolist(),
        "predictions": [_prediction(row, labels, multi_label) for row in probabilities],
    }
    if cams is not None and cam_classes is not None:
        response["cam_labels"] = [labels[index] for index in cam_classes]
        response["cams"] = np.round(cams.astype(np.float64), CAM_DECIMALS).tolist()
    return response


def _prediction(row: np.ndarray, labels: Sequence[str], multi_label: bool) -> str | list[str]:
    if multi_label:
        return [label for label, probability in zip(labels, row, strict=False) if probability > 0.5]
    return labels[int(np.argmax(row))]


def detection_response(
    model: str, version: str, image_shape: tuple[int, int], boxes: np.ndarray, scores: np.ndarray
) -> dict[str, Any]:
    """One radiograph's femoral-head boxes (xyxy, that image's pixels), best first."""
    return {
        "model": model,
        "version": version,
        "image_size": [int(image_shape[0]), int(image_shape[1])],
        "boxes": np.round(boxes.astype(np.float64), 2).reshape(-1, 4).tolist(),
        "scores": np.round(scores.astype(np.float64), DECIMALS).tolist(),
    }


def error_response(status: int, error: Exception) -> dict[str, Any]:
    """The body sent with a rejected request."""
    return {"code": status, "type": type(error).__name__, "message": str(error)}
