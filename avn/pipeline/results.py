"""Typed requests and results of the diagnosis pipeline: plain dataclasses, no protocol in them.

The gRPC servicer converts these to and from ``avn.v1`` protobuf messages and the REST app to and
from JSON, so both protocols return the same fields with the same meaning (the field comments of
``protos/avn/v1/diagnosis.proto`` are their documentation). :func:`encode_diagnosis` /
:func:`decode_diagnosis` are the cache's serialisation: JSON (PNG bytes as base64), never pickle,
because a cache entry must not be able to run code in the gateway.
"""

from __future__ import annotations

import base64
import json
import math
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from avn.vocabulary import STAGES

DEFAULT_NOTE_THRESHOLD = 0.5


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class DiagnoseOptions:
    """What the client asks for besides the image; part of the cache key."""

    include_overlay: bool = False
    cam_stage: str | None = None  # None: each head's predicted stage
    note_threshold: float | None = None  # None: the service's default (0.5 unless configured)

    def problems(self) -> list[str]:
        """Why these options are invalid (empty when they are fine)."""
        problems = []
        if self.cam_stage is not None and self.cam_stage not in STAGES:
            problems.append(
                f"cam_stage {self.cam_stage!r} is not a stage; expected one of {', '.join(STAGES)} or empty"
            )
        threshold = self.note_threshold
        if threshold is not None and not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            problems.append(f"note_threshold must lie in [0, 1], got {self.note_threshold}")
        return problems


@dataclass(frozen=True)
class ImagePayload:
    """One radiograph file as received: DICOM, PNG or JPEG bytes, and the declared media type."""

    data: bytes
    media_type: str = ""  # empty: recognised from the bytes


@dataclass(frozen=True)
class DiagnoseRequest:
    payload: ImagePayload
    options: DiagnoseOptions = DiagnoseOptions()


@dataclass(frozen=True)
class StudyRequest:
    """Several radiographs of one subject."""

    payloads: tuple[ImagePayload, ...]
    options: DiagnoseOptions = DiagnoseOptions()


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Box:
    """xyxy in the radiograph's pixels."""

    x0: float
    y0: float
    x1: float
    y1: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass(frozen=True)
class LabelProbability:
    label: str
    probability: float


@dataclass(frozen=True)
class Note:
    note: str
    stage: str  # the stage the note belongs to
    raw_probability: float  # the notes model's own output
    probability: float  # fused: raw × P(stage) from the staging model
    passed: bool  # probability ≥ the request's threshold


@dataclass(frozen=True)
class FemoralHead:
    box: Box
    score: float
    side: str
    side_probability: float  # the side model's probability of ``side``
    side_corrected: bool  # flipped by the one-head-per-side rule
    stage_probabilities: tuple[LabelProbability, ...]  # vocabulary order
    stage: str
    stage_probability: float
    presence: str
    presence_probability: float
    collapse: str
    collapse_probability: float
    notes: tuple[Note, ...]  # vocabulary order
    cam_png: bytes  # 8-bit grey PNG of the CAM over ``cam_box``; empty when the backend gave none
    cam_stage: str
    cam_box: Box  # the square crop the classifiers saw
    view_probabilities: tuple[LabelProbability, ...]
    # True when the answer should go to a human (avn/pipeline/confidence.py); the reasons say why.
    low_confidence: bool = False
    low_confidence_reasons: tuple[str, ...] = ()

    @property
    def passed_notes(self) -> tuple[Note, ...]:
        return tuple(note for note in self.notes if note.passed)


@dataclass(frozen=True)
class View:
    view: str
    probability: float
    probabilities: tuple[LabelProbability, ...]


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str


@dataclass(frozen=True)
class StepTimings:
    """Milliseconds per step; zero for steps a cache hit skipped."""

    decode_ms: float = 0.0
    detect_ms: float = 0.0
    crop_ms: float = 0.0
    classify_ms: float = 0.0
    fuse_ms: float = 0.0
    output_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class Diagnosis:
    """The result of one radiograph."""

    request_id: str
    width: int
    height: int
    view: View
    heads: tuple[FemoralHead, ...]  # one or two, left to right on the image
    overlay_png: bytes | None
    models: tuple[ModelVersion, ...]
    cache_hit: bool
    timings: StepTimings
    note_threshold: float


@dataclass(frozen=True)
class SideDiagnosis:
    """Subject-level diagnosis of one side: the most severe stage seen on any radiograph."""

    side: str
    stage: str
    presence: str
    collapse: str
    probability: float  # staging probability of ``stage`` on the radiograph it was seen on
    radiograph_index: int  # that radiograph
    radiograph_indices: tuple[int, ...]  # every radiograph that showed this side


@dataclass(frozen=True)
class SkippedRadiograph:
    index: int
    reason: str


@dataclass(frozen=True)
class StudyRadiograph:
    index: int  # position in the request
    result: Diagnosis


@dataclass(frozen=True)
class StudyDiagnosis:
    request_id: str
    sides: tuple[SideDiagnosis, ...]  # sorted by side name
    radiographs: tuple[StudyRadiograph, ...]
    skipped: tuple[SkippedRadiograph, ...]
    models: tuple[ModelVersion, ...]
    total_ms: float = 0.0


# ---------------------------------------------------------------- JSON (cache, REST)


def to_json_dict(value: Any) -> Any:
    """A dataclass tree as JSON-ready built-ins; bytes become base64 text."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json_dict(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [to_json_dict(item) for item in value]
    return value


def from_json_dict(cls: type, data: Any) -> Any:
    """The inverse of :func:`to_json_dict` for dataclass ``cls``."""
    return _build(cls, data)


def encode_diagnosis(diagnosis: Diagnosis) -> bytes:
    return json.dumps(to_json_dict(diagnosis), separators=(",", ":")).encode("utf-8")


def decode_diagnosis(data: bytes) -> Diagnosis:
    return from_json_dict(Diagnosis, json.loads(data))


def _build(kind: Any, data: Any) -> Any:
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union or origin is types.UnionType:
        if data is None:
            return None
        return _build(next(a for a in arguments if a is not type(None)), data)
    if origin is tuple:
        return tuple(_build(arguments[0], item) for item in data)
    if kind is bytes:
        return base64.b64decode(data)
    if is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: _build(hints[f.name], data[f.name]) for f in fields(kind) if f.init})
    if kind is float:
        return float(data)
    return data
