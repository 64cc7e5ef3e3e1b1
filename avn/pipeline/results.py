"""Typed requests and results of the diagnosis pipeline: plain dataclasses, no protocol in them.

These classes are THE definition of a result: the gRPC servicer maps them by field name onto the
``avn.v1`` protobuf messages, the REST app's response models are generated from them (with the field
descriptions given here), and ``tests/test_result_schema.py`` fails when the three drift apart.
:func:`encode_diagnosis` / :func:`decode_diagnosis` are the cache's serialisation: JSON (PNG bytes as
base64), never pickle, because a cache entry must not be able to run code in the gateway.
"""

from __future__ import annotations

import base64
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from avn import __version__ as SOFTWARE_VERSION
from avn.dataset.images import DicomSource
from avn.operating_points import ARGMAX, OPERATING_POINTS
from avn.vocabulary import STAGES

DEFAULT_NOTE_THRESHOLD = 0.5
SELECTABLE_POINTS = (*OPERATING_POINTS, ARGMAX)
DESCRIPTION = "description"  # the key of a result field's documentation in its dataclass metadata


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class DiagnoseOptions:
    """What the client asks for besides the image; part of the cache key."""

    include_overlay: bool = False
    cam_stage: str | None = None  # None: each head's predicted stage
    note_threshold: float | None = None  # None: the service's default (0.5 unless configured)
    include_dicom: bool = False  # also the DICOM SR and annotated copy (DICOM input only)
    operating_point: str | None = None  # None: the service's (AVN_OPERATING_POINT), else the card's default

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
        if self.operating_point is not None and self.operating_point not in SELECTABLE_POINTS:
            problems.append(
                f"operating_point {self.operating_point!r} is not one of {', '.join(SELECTABLE_POINTS)} (or empty)"
            )
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
#
# The field descriptions below are the documentation of both protocols' results: the REST models
# (gateway/rest/models.py) are generated from these classes and carry them into the OpenAPI document.


def described(description: str, **options: Any) -> Any:
    """A dataclass field with its documentation (``options``: ``default`` and the like)."""
    return field(metadata={DESCRIPTION: description}, **options)


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
    """One label of a model's vocabulary and its probability."""

    label: str
    probability: float


@dataclass(frozen=True)
class Note:
    """One radiological note of a femoral head, fused with the staging model's opinion."""

    note: str
    stage: str = described("The stage the note belongs to.")
    raw_probability: float = described("The notes model's own probability.")
    probability: float = described("Fused: raw probability × P(stage) from the staging model.")
    passed: bool = described("probability ≥ the request's note threshold.")


@dataclass(frozen=True)
class FemoralHead:
    """One femoral head found on the radiograph, staged, with notes and heat map."""

    box: Box
    score: float = described("Detector score.")
    side: str
    side_probability: float = described("The side model's probability of side.")
    side_corrected: bool = described(
        "True when the side model called the other side: on a radiograph with two heads the side follows the "
        "image layout (the head on the image's left is the patient's right)."
    )
    stage_probabilities: tuple[LabelProbability, ...] = described("One per stage, in vocabulary order.")
    stage: str
    stage_probability: float
    presence: str
    presence_probability: float
    collapse: str
    collapse_probability: float
    notes: tuple[Note, ...] = described("Every note, in vocabulary order.")
    cam_png: bytes = described("8-bit grey PNG of the class activation map over cam_box; empty if none.")
    cam_stage: str = described("The stage the CAM shows.")
    cam_box: Box = described("The square crop the classifiers saw.")
    view_probabilities: tuple[LabelProbability, ...]
    # Set by avn/pipeline/confidence.py.
    low_confidence: bool = described(
        "The models are unsure of this head (low detector score, or a crop unlike the training data): "
        "route it to a human.",
        default=False,
    )
    low_confidence_reasons: tuple[str, ...] = described("Why low_confidence is set; empty when it is not.", default=())

    @property
    def passed_notes(self) -> tuple[Note, ...]:
        return tuple(note for note in self.notes if note.passed)


@dataclass(frozen=True)
class View:
    """The radiograph's view: the average of its heads' view probabilities."""

    view: str
    probability: float
    probabilities: tuple[LabelProbability, ...]


@dataclass(frozen=True)
class ModelVersion:
    """A model that took part in the result."""

    name: str
    version: str


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold on P(presence) a result was called at, with its sensitivity and specificity on the
    staging model's validation fold (avn/operating_points.py)."""

    name: str = described(
        "sensitive, specific or default (chosen on validation), or argmax: a staging model without operating points."
    )
    threshold: float | None = described("AVN is called present when P(presence) >= threshold; null for argmax.")
    validation_sensitivity: float | None = described("Presence sensitivity on the validation fold; null for argmax.")
    validation_specificity: float | None = described("Presence specificity on the validation fold; null for argmax.")


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
    """The diagnosis of one radiograph."""

    request_id: str
    width: int
    height: int
    view: View
    heads: tuple[FemoralHead, ...] = described("One or two, left to right on the image.")
    overlay_png: bytes | None = described("RGB PNG of the annotated radiograph, when include_overlay was asked for.")
    models: tuple[ModelVersion, ...]
    cache_hit: bool
    timings: StepTimings
    note_threshold: float
    # Provenance (defaults: a result built without them still names this software).
    source: DicomSource | None = described(
        "For DICOM input: the Study, Series and SOP Instance UIDs and the SOP Class of the radiograph; "
        "null for PNG and JPEG.",
        default=None,
    )
    software_version: str = described("The version of the software that produced the result.", default=SOFTWARE_VERSION)
    operating_point: OperatingPoint | None = described(
        "The operating point presence, stage and collapse were called at, with its validation figures.",
        default=None,
    )
    dicom_sr: bytes | None = described(
        "When include_dicom was asked for: the Comprehensive SR (TID 1500 Measurement Report) of this result, "
        "a DICOM Part 10 file in the source's study.",
        default=None,
    )
    dicom_annotated: bytes | None = described(
        "When include_dicom was asked for: the annotated radiograph as a DICOM Secondary Capture (Part 10 file) "
        "in the source's study.",
        default=None,
    )


@dataclass(frozen=True)
class SideDiagnosis:
    """Subject-level diagnosis of one side: the most severe stage seen on any radiograph."""

    side: str
    stage: str = described("The most severe stage seen on any radiograph of the study.")
    presence: str
    collapse: str
    probability: float = described("The staging probability of stage on the radiograph it was seen on.")
    radiograph_index: int = described("Index (in the request) of that radiograph.")
    radiograph_indices: tuple[int, ...] = described("Every radiograph that showed this side.")


@dataclass(frozen=True)
class SkippedRadiograph:
    """A radiograph of the study on which no femoral head was found."""

    index: int
    reason: str


@dataclass(frozen=True)
class StudyRadiograph:
    """The diagnosis of one radiograph of a study."""

    index: int = described("Position of the file in the request.")
    result: Diagnosis


@dataclass(frozen=True)
class StudyDiagnosis:
    """The result of several radiographs of one subject."""

    request_id: str
    sides: tuple[SideDiagnosis, ...] = described("One per side seen on at least one radiograph, sorted by side name.")
    radiographs: tuple[StudyRadiograph, ...]
    skipped: tuple[SkippedRadiograph, ...] = described("Radiographs without a femoral head.")
    models: tuple[ModelVersion, ...]
    total_ms: float = 0.0
    software_version: str = described("The version of the software that produced the result.", default=SOFTWARE_VERSION)


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
