"""Spans of the diagnosis pipeline, through the OpenTelemetry API only.

Without an SDK tracer provider — the gateway installs one when an OTLP endpoint is configured
(``gateway/tracing.py``) — every span here is a no-op, so the evaluation and ``avn diagnose`` pay
nothing. Under a request's span, one radiograph gives::

    diagnose
    ├── decode
    ├── cache lookup                      (a hit ends the tree here)
    ├── detect ── model detection
    ├── crop ──── crop head (one per head)
    ├── classify ─ model view │ model side │ model staging │ model notes   (concurrent)
    ├── fuse
    ├── render
    └── cache store

No span carries anything that could identify a patient: the attributes are the ``ATTRIBUTE_*``
keys below — sizes, counts, formats, model names and versions, cache outcomes, error types —
never names, ids, file names, DICOM header text, request ids or pixels, and an exception's
message is not recorded (only its type): a trace leaves the hospital network for a collector.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from avn.pipeline.backend import Classification, Detections, ModelBackend, ModelInfo

TRACER = trace.get_tracer("avn.pipeline")

# Step names of StepClock (and StepTimings) → span names; "output" draws the CAMs and the overlay.
SPAN_OF_STEP = {"output": "render"}

ATTRIBUTE_IMAGE_FORMAT = "avn.image.format"  # dicom, png or jpeg
ATTRIBUTE_IMAGE_BYTES = "avn.image.bytes"
ATTRIBUTE_IMAGE_WIDTH = "avn.image.width"
ATTRIBUTE_IMAGE_HEIGHT = "avn.image.height"
ATTRIBUTE_CACHE_HIT = "avn.cache.hit"
ATTRIBUTE_CANDIDATES = "avn.detect.candidates"  # boxes the detector proposed
ATTRIBUTE_HEADS = "avn.heads"  # heads kept for diagnosis
ATTRIBUTE_HEAD_INDEX = "avn.head.index"  # left to right on the image
ATTRIBUTE_CROP_SIZES = "avn.crop.sizes"
ATTRIBUTE_MODEL_NAME = "avn.model.name"
ATTRIBUTE_MODEL_VERSION = "avn.model.version"
ATTRIBUTE_MODEL_ITEMS = "avn.model.items"  # crops (or images) in this call
ATTRIBUTE_BATCH_SIZE = "avn.model.batch_size"  # requests TorchServe ran in one forward pass with this one
ATTRIBUTE_OVERLAY = "avn.render.overlay"
ATTRIBUTE_STUDY_INDEX = "avn.study.index"
ATTRIBUTE_STUDY_SIZE = "avn.study.radiographs"
ATTRIBUTE_ERROR_TYPE = "error.type"  # OpenTelemetry's semantic convention: the exception's class name

# Told the model name and the seconds a model call took (gateway metrics).
ModelCallObserver = Callable[[str, float], None]


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A child span of the current one; a failure inside sets its status to ERROR with the error's
    type only (messages may quote the request)."""
    with TRACER.start_as_current_span(
        name, attributes=attributes or None, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as error:
            mark_failed(current, error)
            raise


def step_span(step: str) -> contextlib.AbstractContextManager[Span]:
    """The span of a pipeline step named as in :class:`avn.pipeline.results.StepTimings`."""
    return span(SPAN_OF_STEP.get(step, step))


def mark_failed(current: Span, error: BaseException) -> None:
    current.set_attribute(ATTRIBUTE_ERROR_TYPE, type(error).__name__)
    current.set_status(Status(StatusCode.ERROR, type(error).__name__))


def note_batch_size(size: object) -> None:
    """What a model server reported as the batch its forward pass ran (TorchServe groups concurrent
    requests), on the current model call's span."""
    if isinstance(size, int) and size > 0:
        trace.get_current_span().set_attribute(ATTRIBUTE_BATCH_SIZE, size)


def radiograph_attributes(data_bytes: int, image_format: str, width: int, height: int) -> dict[str, Any]:
    return {
        ATTRIBUTE_IMAGE_BYTES: data_bytes,
        ATTRIBUTE_IMAGE_FORMAT: image_format,
        ATTRIBUTE_IMAGE_WIDTH: width,
        ATTRIBUTE_IMAGE_HEIGHT: height,
    }


def head_span(index: int, sizes: Sequence[int]) -> contextlib.AbstractContextManager[Span]:
    return span("crop head", **{ATTRIBUTE_HEAD_INDEX: index, ATTRIBUTE_CROP_SIZES: list(sizes)})


class ObservedBackend:
    """A :class:`~avn.pipeline.backend.ModelBackend` whose every model call is a span (model name,
    version, items sent) and is timed for ``observers``; the pipeline wraps its backend in one per
    radiograph, with the versions it already looked up."""

    def __init__(
        self, backend: ModelBackend, models: Mapping[str, ModelInfo], observers: Sequence[ModelCallObserver] = ()
    ) -> None:
        self.backend = backend
        self.versions = {name: info.version for name, info in models.items()}
        self.observers = observers

    async def detect(self, image: np.ndarray) -> Detections:
        with self._call("detection", 1):
            return await self.backend.detect(image)

    async def classify(self, model: str, crops: np.ndarray, cam_stage: str | None = None) -> Classification:
        with self._call(model, len(crops)):
            return await self.backend.classify(model, crops, cam_stage=cam_stage)

    async def models(self) -> list[ModelInfo]:
        return await self.backend.models()

    async def close(self) -> None:
        await self.backend.close()

    @contextlib.contextmanager
    def _call(self, model: str, items: int) -> Iterator[None]:
        attributes = {ATTRIBUTE_MODEL_NAME: model, ATTRIBUTE_MODEL_ITEMS: items}
        if model in self.versions:
            attributes[ATTRIBUTE_MODEL_VERSION] = self.versions[model]
        started = time.perf_counter()
        try:
            with span(f"model {model}", **attributes):
                yield
        finally:
            seconds = time.perf_counter() - started
            for observer in self.observers:
                observer(model, seconds)
