"""The REST front door: a FastAPI app with the same operations as the gRPC service.

=================  =========================================================================
``POST /v1/diagnose``  one radiograph: the raw file as the body (``Content-Type`` image/png,
                       image/jpeg, application/dicom, or application/octet-stream to let the
                       gateway recognise it), or ``multipart/form-data`` with a ``file`` part
``POST /v1/studies``   several radiographs of one subject, ``multipart/form-data``, one part each
``GET /v1/models``     name, version, input size and labels of every model
``GET /healthz``       the process is alive (no model involved)
``GET /readyz``        200 only when every model is loaded and answers, else 503 + Retry-After
``GET /metrics``       Prometheus text (:mod:`gateway.metrics`)
``POST /v1/render``    the web app's display rendition of one radiograph (body as for diagnose):
                       an 8-bit PNG under a window centre/width (:mod:`gateway.display`)
``GET /v1/cases``      the self-study case bank (:mod:`gateway.cases`); per case:
                       ``/v1/cases/{id}/image`` (rendition), ``/diagnosis``, ``/truth``
``GET /``              redirects to the web app, static files under ``/app/`` (``web/``)
=================  =========================================================================

Options are query parameters of both POSTs: ``include_overlay``, ``cam_stage``, ``note_threshold``.
Results are typed pydantic models mirroring :mod:`avn.pipeline.results` (PNG fields as base64), so the
OpenAPI document at ``/docs`` describes every field. Failures go through the one mapping of
:mod:`gateway.errors`: the status it gives, the body ``{"error": {"code", "message",
"request_id"}}`` (``code`` is the error type, e.g. ``InvalidImage``), ``Retry-After`` on 503. A body
over ``AVN_MAX_PAYLOAD_BYTES`` is refused with 413 while it streams in, before it is decoded.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from avn.pipeline.decode import decode_payload
from avn.pipeline.pipeline import MAX_REQUEST_ID_LENGTH, Pipeline, new_request_id
from avn.pipeline.results import DiagnoseOptions, DiagnoseRequest, ImagePayload, StudyRequest, to_json_dict
from gateway.cases import CaseBank
from gateway.display import windowed_png
from gateway.errors import (
    DiagnosisError,
    InvalidArgument,
    InvalidImage,
    PayloadTooLarge,
    as_gateway_error,
    error_metadata,
    status_of,
)
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings

logger = logging.getLogger(__name__)

PROTOCOL = "rest"
REQUEST_ID_HEADER = "x-request-id"
MULTIPART = "multipart/form-data"
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # part headers and boundaries around the file(s)
NOT_READY_RETRY_S = 5
RAW_MEDIA_TYPES = ("application/dicom", "image/png", "image/jpeg", "application/octet-stream")
# The web app: static files from the top-level web/ folder, served under WEB_PATH ("/" redirects).
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
WEB_PATH = "/app"
# Headers of a display rendition: the window it was drawn with (the web app's sliders follow it)
# and the radiograph's size in pixels (the coordinates of boxes).
WINDOW_CENTER_HEADER = "avn-window-center"
WINDOW_WIDTH_HEADER = "avn-window-width"
IMAGE_WIDTH_HEADER = "avn-image-width"
IMAGE_HEIGHT_HEADER = "avn-image-height"
SOURCE_FORMAT_HEADER = "avn-source-format"

PipelineSource = Pipeline | Callable[[], Pipeline | Awaitable[Pipeline]]


# ---------------------------------------------------------------- response models


class _Strict(BaseModel):
    # extra="forbid": a field added to avn.pipeline.results but not here fails loudly, not silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoxResult(_Strict):
    """xyxy in the radiograph's pixels."""

    x0: float
    y0: float
    x1: float
    y1: float


class LabelProbabilityResult(_Strict):
    label: str
    probability: float


class NoteResult(_Strict):
    note: str
    stage: str = Field(description="The stage the note belongs to.")
    raw_probability: float = Field(description="The notes model's own probability.")
    probability: float = Field(description="Fused: raw probability × P(stage) from the staging model.")
    passed: bool = Field(description="probability ≥ the request's note threshold.")


class FemoralHeadResult(_Strict):
    box: BoxResult
    score: float = Field(description="Detector score.")
    side: str
    side_probability: float
    side_corrected: bool = Field(description="Flipped by the one-head-per-side rule.")
    stage_probabilities: list[LabelProbabilityResult]
    stage: str
    stage_probability: float
    presence: str
    presence_probability: float
    collapse: str
    collapse_probability: float
    notes: list[NoteResult]
    cam_png: str = Field(description="Base64 8-bit grey PNG of the class activation map over cam_box; empty if none.")
    cam_stage: str = Field(description="The stage the CAM shows.")
    cam_box: BoxResult = Field(description="The square crop the classifiers saw.")
    view_probabilities: list[LabelProbabilityResult]
    low_confidence: bool = Field(
        description="The models are unsure of this head (low detector score, or a crop unlike the training data): "
        "route it to a human."
    )
    low_confidence_reasons: list[str] = Field(description="Why low_confidence is set; empty when it is not.")


class ViewResult(_Strict):
    view: str
    probability: float
    probabilities: list[LabelProbabilityResult]


class ModelVersionResult(_Strict):
    name: str
    version: str


class StepTimingsResult(_Strict):
    """Milliseconds per step; zero for steps a cache hit skipped."""

    decode_ms: float
    detect_ms: float
    crop_ms: float
    classify_ms: float
    fuse_ms: float
    output_ms: float
    total_ms: float


class DiagnosisResponse(_Strict):
    """The diagnosis of one radiograph."""

    request_id: str
    width: int
    height: int
    view: ViewResult
    heads: list[FemoralHeadResult] = Field(description="One or two, left to right on the image.")
    overlay_png: str | None = Field(description="Base64 RGB PNG of the annotated radiograph, when asked for.")
    models: list[ModelVersionResult]
    cache_hit: bool
    timings: StepTimingsResult
    note_threshold: float


class SideDiagnosisResult(_Strict):
    side: str
    stage: str = Field(description="The most severe stage seen on any radiograph of the study.")
    presence: str
    collapse: str
    probability: float
    radiograph_index: int
    radiograph_indices: list[int]


class SkippedRadiographResult(_Strict):
    index: int
    reason: str


class StudyRadiographResult(_Strict):
    index: int = Field(description="Position of the file in the request.")
    result: DiagnosisResponse


class StudyResponse(_Strict):
    request_id: str
    sides: list[SideDiagnosisResult]
    radiographs: list[StudyRadiographResult]
    skipped: list[SkippedRadiographResult] = Field(description="Radiographs without a femoral head.")
    models: list[ModelVersionResult]
    total_ms: float


class ModelDescription(_Strict):
    name: str
    version: str
    input_size: int
    labels: list[str]


class HealthResponse(_Strict):
    status: str


class ReadinessResponse(_Strict):
    ready: bool


class CaseSummary(_Strict):
    """One case of the bank, without its truth."""

    id: str = Field(description="The data-set image id; the case_id of the second-opinion export.")
    name: str = Field(description="The image's file name in the data set.")
    sides: list[str] = Field(description="The femoral heads to stage, left to right on the image.")


class CaseBankResponse(_Strict):
    available: bool
    source: str = Field(description="The case bank's folder (AVN_CASE_BANK).")
    split: str = Field(description="E3, or all when the folder's E3 split is too small.")
    message: str = Field(description="Why the bank is empty; empty when it is not.")
    cases: list[CaseSummary]


class CaseHeadTruth(_Strict):
    side: str
    stage: str
    notes: list[str]
    box: BoxResult


class CaseTruthResponse(_Strict):
    """The ground truth of one case (the web app asks for it once the student has answered)."""

    id: str
    name: str
    subject_id: str
    view: str
    width: int
    height: int
    heads: list[CaseHeadTruth] = Field(description="Left to right on the image.")


class ErrorDetail(_Strict):
    code: str = Field(
        description="The error type: InvalidImage, InvalidArgument, PayloadTooLarge, NoFemoralHead, "
        "ModelUnavailable, DeadlineExceeded or Internal."
    )
    message: str
    request_id: str


class ErrorResponse(_Strict):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Unreadable image or invalid option"),
        (413, "Payload over the limit"),
        (422, "No femoral head found"),
        (500, "Internal error"),
        (503, "A model is unavailable; retry after Retry-After seconds"),
        (504, "Deadline exceeded"),
    )
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
DIAGNOSE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{media_type: _BINARY for media_type in RAW_MEDIA_TYPES},
            MULTIPART: {"schema": {"type": "object", "properties": {"file": _BINARY["schema"]}, "required": ["file"]}},
        },
    }
}
DISPLAY_PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}},
        "description": f"8-bit grey PNG; headers {WINDOW_CENTER_HEADER} and {WINDOW_WIDTH_HEADER} give the window used "
        f"(fractions of the decoded range), {IMAGE_WIDTH_HEADER} / {IMAGE_HEIGHT_HEADER} the size in pixels.",
    },
    **ERROR_RESPONSES,
}
WINDOW_CENTER_QUERY = Query(
    None, ge=0, le=1, description="Window centre, fraction of the decoded range; default automatic."
)
WINDOW_WIDTH_QUERY = Query(
    None, gt=0, le=2, description="Window width, fraction of the decoded range; default automatic."
)
STUDY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": _BINARY["schema"]}},
                    "required": ["files"],
                }
            }
        },
    }
}


# ---------------------------------------------------------------- the app


def create_app(
    pipeline: PipelineSource,
    settings: Settings | None = None,
    metrics: GatewayMetrics | None = None,
    case_bank: CaseBank | None = None,
) -> FastAPI:
    """The REST app over ``pipeline`` — a :class:`Pipeline`, or a (sync or async) factory called at
    start-up whose pipeline the app also closes at shutdown. A pipeline passed in stays the
    caller's to close. ``metrics`` may be shared with the gRPC server of the same process.
    ``case_bank`` defaults to the folder ``AVN_CASE_BANK`` names."""
    settings = settings or Settings()
    metrics = metrics or GatewayMetrics()
    if case_bank is None:
        case_bank = CaseBank.from_folder(settings.case_bank)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = not isinstance(pipeline, Pipeline)
        app.state.pipeline = await _resolved(pipeline)
        metrics.track_cache(app.state.pipeline.cache)
        try:
            yield
        finally:
            if owned:
                await app.state.pipeline.close()

    app = FastAPI(
        title="AVN-net diagnosis gateway",
        version="1",
        summary="Femoral-head avascular-necrosis staging on pelvic radiographs (PNG, JPEG, DICOM).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    if isinstance(pipeline, Pipeline):  # usable without running the lifespan too
        app.state.pipeline = pipeline
        metrics.track_cache(pipeline.cache)
    _add_error_handlers(app)
    _add_routes(app, settings, metrics)
    _add_web_routes(app, settings, metrics, case_bank)

    @app.middleware("http")
    async def echo_request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Successful answers carry the id too, so a client can quote it when reporting a result.
        response = await call_next(request)
        request_id = getattr(request.state, "request_id", None)
        if request_id and REQUEST_ID_HEADER not in response.headers:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return app


async def _resolved(source: PipelineSource) -> Pipeline:
    if isinstance(source, Pipeline):
        return source
    made = source()
    return await made if inspect.isawaitable(made) else made


def _add_routes(app: FastAPI, settings: Settings, metrics: GatewayMetrics) -> None:
    @app.post(
        "/v1/diagnose",
        response_model=DiagnosisResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=DIAGNOSE_BODY,
        summary="Diagnose one radiograph",
    )
    async def diagnose(
        request: Request,
        include_overlay: bool = False,
        cam_stage: str | None = None,
        note_threshold: float | None = None,
    ) -> DiagnosisResponse:
        async with _observed(request, metrics, "diagnose"):
            payload = await _single_payload(request, settings.max_payload_bytes)
            options = _options(include_overlay, cam_stage, note_threshold)
            result = await _pipeline(request).diagnose(
                DiagnoseRequest(payload, options), request_id=request.state.request_id, timeout_s=settings.deadline_s
            )
            metrics.observe_diagnosis(result)
            return DiagnosisResponse.model_validate(to_json_dict(result))

    @app.post(
        "/v1/studies",
        response_model=StudyResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=STUDY_BODY,
        summary="Diagnose several radiographs of one subject",
    )
    async def studies(
        request: Request,
        include_overlay: bool = False,
        cam_stage: str | None = None,
        note_threshold: float | None = None,
    ) -> StudyResponse:
        async with _observed(request, metrics, "study"):
            pipeline = _pipeline(request)
            limit = settings.max_payload_bytes * pipeline.max_study_radiographs + MULTIPART_OVERHEAD_BYTES
            payloads = await _study_payloads(request, limit, settings.max_payload_bytes)
            options = _options(include_overlay, cam_stage, note_threshold)
            result = await pipeline.diagnose_study(
                StudyRequest(tuple(payloads), options),
                request_id=request.state.request_id,
                timeout_s=settings.deadline_s,
            )
            for radiograph in result.radiographs:
                metrics.observe_diagnosis(radiograph.result)
            return StudyResponse.model_validate(to_json_dict(result))

    @app.get("/v1/models", response_model=list[ModelDescription], responses=ERROR_RESPONSES, summary="The models")
    async def models(request: Request) -> list[ModelDescription]:
        async with _observed(request, metrics, "models"):
            infos = await _pipeline(request).models()
            return [
                ModelDescription(
                    name=info.name, version=info.version, input_size=info.input_size, labels=list(info.labels)
                )
                for info in infos
            ]

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get(
        "/readyz",
        response_model=ReadinessResponse,
        responses={503: {"model": ReadinessResponse, "description": "Not every model is loaded and answering"}},
        summary="Readiness: every model is loaded and answers",
    )
    async def readyz(request: Request) -> Response:
        ready = await _pipeline(request).ready()
        if ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False}, status_code=503, headers={"Retry-After": str(NOT_READY_RETRY_S)})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)


def _add_web_routes(app: FastAPI, settings: Settings, metrics: GatewayMetrics, case_bank: CaseBank) -> None:
    """What the web app needs beyond the diagnosis API: display renditions, the case bank, the page."""

    @app.post(
        "/v1/render",
        response_class=Response,
        responses=DISPLAY_PNG_RESPONSE,
        openapi_extra=DIAGNOSE_BODY,
        summary="Display rendition of one radiograph under a window/level",
    )
    async def render(
        request: Request,
        window_center: float | None = WINDOW_CENTER_QUERY,
        window_width: float | None = WINDOW_WIDTH_QUERY,
    ) -> Response:
        async with _observed(request, metrics, "render"):
            payload = await _single_payload(request, settings.max_payload_bytes)
            radiograph = await asyncio.to_thread(decode_payload, payload, _pipeline(request).max_image_bytes)
            return await _display_response(radiograph.pixels, window_center, window_width, radiograph.source_format)

    @app.get("/v1/cases", response_model=CaseBankResponse, summary="The self-study case bank")
    async def cases(request: Request) -> CaseBankResponse:
        async with _observed(request, metrics, "cases"):
            return CaseBankResponse(
                available=case_bank.available,
                source=str(case_bank.folder or ""),
                split=case_bank.split,
                message=case_bank.problem,
                cases=[CaseSummary(id=c.id, name=c.file_name, sides=list(c.sides)) for c in case_bank.cases],
            )

    @app.get(
        "/v1/cases/{case_id}/image",
        response_class=Response,
        responses=DISPLAY_PNG_RESPONSE,
        summary="Display rendition of a case's radiograph",
    )
    async def case_image(
        request: Request,
        case_id: str,
        window_center: float | None = WINDOW_CENTER_QUERY,
        window_width: float | None = WINDOW_WIDTH_QUERY,
    ) -> Response:
        async with _observed(request, metrics, "case_image"):
            limit = _pipeline(request).max_image_bytes
            radiograph = await asyncio.to_thread(case_bank.radiograph, case_id, limit)
            return await _display_response(radiograph.pixels, window_center, window_width, radiograph.source_format)

    @app.get(
        "/v1/cases/{case_id}/diagnosis",
        response_model=DiagnosisResponse,
        responses=ERROR_RESPONSES,
        summary="The system's diagnosis of a case (as POST /v1/diagnose)",
    )
    async def case_diagnosis(
        request: Request,
        case_id: str,
        include_overlay: bool = False,
        cam_stage: str | None = None,
        note_threshold: float | None = None,
    ) -> DiagnosisResponse:
        async with _observed(request, metrics, "case_diagnosis"):
            data = await asyncio.to_thread(case_bank.file_bytes, case_id)
            options = _options(include_overlay, cam_stage, note_threshold)
            result = await _pipeline(request).diagnose(
                DiagnoseRequest(ImagePayload(data), options),
                request_id=request.state.request_id,
                timeout_s=settings.deadline_s,
            )
            metrics.observe_diagnosis(result)
            return DiagnosisResponse.model_validate(to_json_dict(result))

    @app.get(
        "/v1/cases/{case_id}/truth",
        response_model=CaseTruthResponse,
        responses=ERROR_RESPONSES,
        summary="The ground truth of a case",
    )
    async def case_truth(request: Request, case_id: str) -> CaseTruthResponse:
        async with _observed(request, metrics, "case_truth"):
            case = case_bank.case(case_id)
            heads = [
                CaseHeadTruth(side=h.side, stage=h.stage, notes=list(h.notes), box=_box(h.box)) for h in case.heads
            ]
            return CaseTruthResponse(
                id=case.id,
                name=case.file_name,
                subject_id=case.subject_id,
                view=case.view,
                width=case.width,
                height=case.height,
                heads=heads,
            )

    _mount_web_app(app)


def _mount_web_app(app: FastAPI) -> None:
    if not (WEB_DIR / "index.html").is_file():
        # An install without the web/ folder (a wheel) still serves the API.
        logger.warning("no web app at %s: serving the API only", WEB_DIR)
        return

    @app.get("/", include_in_schema=False)
    async def web_app() -> RedirectResponse:
        return RedirectResponse(f"{WEB_PATH}/")

    app.mount(WEB_PATH, RevalidatedStaticFiles(directory=WEB_DIR, html=True), name="web")


class RevalidatedStaticFiles(StaticFiles):
    """Static files the browser revalidates on every load (a cheap 304 by ETag): without it, a
    browser's heuristic caching could mix modules of a new release with cached ones of the old."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "no-cache"
        return response


def _box(xyxy: tuple[float, float, float, float]) -> BoxResult:
    x0, y0, x1, y1 = xyxy
    return BoxResult(x0=x0, y0=y0, x1=x1, y1=y1)


async def _display_response(
    pixels: np.ndarray, center: float | None, width: float | None, source_format: str
) -> Response:
    png, window = await asyncio.to_thread(windowed_png, pixels, center, width)  # percentiles and PNG: off the loop
    headers = {
        WINDOW_CENTER_HEADER: f"{window.center:.6g}",
        WINDOW_WIDTH_HEADER: f"{window.width:.6g}",
        IMAGE_WIDTH_HEADER: str(pixels.shape[1]),
        IMAGE_HEIGHT_HEADER: str(pixels.shape[0]),
        SOURCE_FORMAT_HEADER: source_format,
        # Remade on request: cheap, and a case bank may be rebuilt under the same ids.
        "cache-control": "no-store",
    }
    return Response(png, media_type="image/png", headers=headers)


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


@asynccontextmanager
async def _observed(request: Request, metrics: GatewayMetrics, operation: str) -> AsyncIterator[None]:
    """Give the request its id, and count and time it whatever the outcome. An untyped failure (a
    bug) is logged here with its traceback and answered as :class:`Internal`."""
    request.state.request_id = _request_id(request)
    started = time.perf_counter()
    error: str | None = None
    try:
        yield
    except Exception as failure:
        typed = as_gateway_error(failure)
        error = type(typed).__name__
        if typed is not failure:
            logger.error("request %s failed unexpectedly", request.state.request_id, exc_info=failure)
            raise typed from failure
        raise
    finally:
        metrics.observe_request(PROTOCOL, operation, time.perf_counter() - started, error)


def _request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if 0 < len(given) <= MAX_REQUEST_ID_LENGTH and given.isprintable() else new_request_id()


def _options(include_overlay: bool, cam_stage: str | None, note_threshold: float | None) -> DiagnoseOptions:
    # note_threshold None: the pipeline applies the service's AVN_NOTE_THRESHOLD.
    return DiagnoseOptions(include_overlay=include_overlay, cam_stage=cam_stage or None, note_threshold=note_threshold)


# ---------------------------------------------------------------- bodies


async def _single_payload(request: Request, limit: int) -> ImagePayload:
    """The radiograph of ``POST /v1/diagnose``: the raw body, or the multipart ``file`` part."""
    content_type = request.headers.get("content-type", "")
    if _is_multipart(content_type):
        files = await _uploaded_files(request, limit + MULTIPART_OVERHEAD_BYTES, limit)
        if len(files) != 1:
            raise InvalidArgument(
                f"send exactly one file part (named 'file'), got {len(files)}; use /v1/studies for several"
            )
        return files[0]
    body = await _limited_body(request, limit)
    if not body:
        raise InvalidImage("empty image: the request body carried no bytes")
    return ImagePayload(body, content_type)


async def _study_payloads(request: Request, limit: int, file_limit: int) -> list[ImagePayload]:
    if not _is_multipart(request.headers.get("content-type", "")):
        raise InvalidArgument("a study is sent as multipart/form-data with one file part per radiograph")
    return await _uploaded_files(request, limit, file_limit)


def _is_multipart(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == MULTIPART


async def _limited_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploaded_files(request: Request, limit: int, file_limit: int) -> list[ImagePayload]:
    """Every file part, in order. The body is read under the limit first, then parsed from memory:
    the multipart parser itself would accept a chunked upload of any size."""
    body = await _limited_body(request, limit)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except Exception as error:  # starlette raises its own parse errors; all mean "not a valid form"
        raise InvalidArgument(f"malformed multipart body: {error}") from error
    payloads = []
    try:
        for name, value in form.multi_items():
            if not isinstance(value, UploadFile):
                continue  # options travel as query parameters; stray text fields are ignored
            data = await value.read()
            if len(data) > file_limit:
                raise PayloadTooLarge(
                    f"file part {name!r} ({value.filename}) of {len(data)} bytes"
                    f" is over the limit of {file_limit} bytes"
                )
            payloads.append(ImagePayload(data, _part_media_type(value)))
    finally:
        await form.close()
    if not payloads:
        raise InvalidImage("the multipart body holds no file part")
    return payloads


def _part_media_type(upload: UploadFile) -> str:
    # Browsers and curl label unknown files application/octet-stream: the pipeline then sniffs the bytes.
    return upload.content_type or ""


# ---------------------------------------------------------------- errors


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DiagnosisError)
    async def gateway_error(request: Request, error: DiagnosisError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors())
        return error_response(request, InvalidArgument(f"invalid request parameters: {problems}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return error_response(request, error)


def error_response(request: Request, error: Exception) -> JSONResponse:
    """The mapped status, the error body, and the headers clients act on (Retry-After, error type)."""
    typed = as_gateway_error(error)
    request_id = getattr(request.state, "request_id", None) or new_request_id()
    status = status_of(typed).http_status
    if typed is not error:
        logger.error("request %s failed unexpectedly", request_id, exc_info=error)
    elif status >= 500:
        logger.warning("request %s: %s: %s", request_id, type(typed).__name__, typed)
    body = ErrorResponse(error=ErrorDetail(code=type(typed).__name__, message=str(typed), request_id=request_id))
    headers = {name: value for name, value in error_metadata(typed)}
    headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


async def serve_rest(app: FastAPI, settings: Settings) -> None:
    """Serve ``app`` with uvicorn on ``AVN_REST_HOST:AVN_REST_PORT`` in the running event loop
    (beside the gRPC server) until cancelled."""
    import uvicorn  # noqa: PLC0415 — only the serving process needs it

    config = uvicorn.Config(
        app, host=settings.rest_host, port=settings.rest_port, log_level=settings.log_level.lower(), lifespan="on"
    )
    await uvicorn.Server(config).serve()
