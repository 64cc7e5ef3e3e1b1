"""The REST app: :func:`create_app` assembles the routers, the error handlers, the audit middleware
and the request-id echo over one pipeline, and :func:`rest_server` serves it with uvicorn.

Closed by default: every router is included behind the API-key dependency
(:func:`gateway.rest.dependencies.authenticated`) — the diagnosis and web API, ``/v1/models``,
``/metrics``, and the OpenAPI document and its pages (``/openapi.json``, ``/docs``, ``/redoc``),
which are routes of their own here rather than FastAPI's open ones. Open: the health checks
(``/healthz``, ``/readyz``), and the web app's static files under ``/app/`` with the ``/`` redirect
(public code; the page asks for a key before it calls the API). :data:`OPEN_PATHS` and
:data:`OPEN_PREFIXES` name them, for the audit middleware and the test that every other route
refuses a request without a key.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from avn.pipeline.pipeline import Pipeline
from gateway.admission import Admission
from gateway.auth import Authenticator, authenticator_from
from gateway.cases import CaseBank
from gateway.metrics import GatewayMetrics
from gateway.rest.dependencies import REQUEST_ID_HEADER, authenticated
from gateway.rest.error_handlers import add_error_handlers
from gateway.rest.middleware import AuditMiddleware
from gateway.rest.routers import diagnosis, service, web
from gateway.settings import Settings
from gateway.tls import tls_files
from gateway.tracing import TRACE_ID_KEY

PipelineSource = Pipeline | Callable[[], Pipeline | Awaitable[Pipeline]]
# FastAPI's own OpenTelemetry spans and logs stay off: the gateway's request span
# (gateway/tracing.py, opened per operation) is the one REST and gRPC share, with the trace id in
# the answer and no PHI (FastAPI's would record exception messages and stack traces). FastAPI
# versions without native telemetry keep the option as an unused extra.
NO_NATIVE_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
# Reached without an API key, and not audited: probes, and the page's own static files.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", web.WEB_PATH})
OPEN_PREFIXES = (f"{web.WEB_PATH}/",)
OPENAPI_PATH, DOCS_PATH, REDOC_PATH = "/openapi.json", "/docs", "/redoc"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def create_app(
    pipeline: PipelineSource,
    settings: Settings | None = None,
    metrics: GatewayMetrics | None = None,
    case_bank: CaseBank | None = None,
    authenticator: Authenticator | None = None,
    admission: Admission | None = None,
) -> FastAPI:
    """The REST app over ``pipeline`` — a :class:`Pipeline`, or a (sync or async) factory called at
    start-up whose pipeline the app also closes at shutdown. A pipeline passed in stays the
    caller's to close. ``metrics`` and ``authenticator`` may be shared with the gRPC server of the
    same process; the latter defaults to the one ``AVN_AUTH`` and ``AVN_API_KEYS_FILE`` give. So may
    ``admission`` (the in-flight limit and the drain; default: its own, of ``AVN_MAX_IN_FLIGHT``).
    ``case_bank`` defaults to the folder ``AVN_CASE_BANK`` names."""
    settings = settings or Settings()
    metrics = metrics or GatewayMetrics()
    authenticator = authenticator or authenticator_from(settings)
    if case_bank is None:
        case_bank = CaseBank.from_folder(settings.case_bank)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = not isinstance(pipeline, Pipeline)
        app.state.pipeline = await _resolved(pipeline)
        metrics.track_pipeline(app.state.pipeline)
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
        telemetry=NO_NATIVE_TELEMETRY,
        # FastAPI's own document routes are open to anyone: replaced by closed ones (_document_router).
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    # What the routers' dependencies (gateway/rest/dependencies.py) hand to the handlers.
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.case_bank = case_bank
    app.state.authenticator = authenticator
    app.state.admission = admission or Admission(settings.max_in_flight)
    if isinstance(pipeline, Pipeline):  # usable without running the lifespan too
        app.state.pipeline = pipeline
        metrics.track_pipeline(pipeline)
    add_error_handlers(app)
    app.include_router(service.health_router)
    closed = [Depends(authenticated)]
    for router in (diagnosis.router, service.router, web.router, _document_router(app)):
        app.include_router(router, dependencies=closed)
    web.mount_web_app(app)
    app.middleware("http")(_echo_request_id)
    app.add_middleware(AuditMiddleware, is_open=is_open)  # outermost: sees every answer, errors included
    return app


def _document_router(app: FastAPI) -> APIRouter:
    """The OpenAPI document and its two viewers, as closed routes (the viewers need the key too: a
    browser can send it only with authentication off, so in production they serve curl and tools)."""
    router = APIRouter(include_in_schema=False)

    @router.get(OPENAPI_PATH)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get(DOCS_PATH)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{app.title} — Swagger UI")

    @router.get(REDOC_PATH)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=OPENAPI_PATH, title=f"{app.title} — ReDoc")

    return router


async def _resolved(source: PipelineSource) -> Pipeline:
    if isinstance(source, Pipeline):
        return source
    made = source()
    return await made if inspect.isawaitable(made) else made


async def _echo_request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    # Successful answers carry the ids too, so a client can quote them when reporting a result; the
    # trace id (when the request belongs to a trace) finds the request's trace.
    response = await call_next(request)
    request_id = getattr(request.state, "request_id", None)
    if request_id and REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = request_id
    trace_id = getattr(request.state, "trace_id", "")
    if trace_id:
        response.headers[TRACE_ID_KEY] = trace_id
    return response


REST_CONNECTION_MARGIN = 32  # connections beyond the in-flight limit uvicorn keeps (idle keep-alives, health checks)


class RestServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the gateway's service decides when to stop, after
    draining (gateway/service.py), and tells it through ``should_exit``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def rest_server(app: FastAPI, settings: Settings) -> RestServer:
    """``app`` under uvicorn on ``AVN_REST_HOST:AVN_REST_PORT`` (TLS when configured); ``await
    server.serve()`` to run it, ``server.should_exit = True`` to stop it."""
    tls = tls_files(settings)
    config = uvicorn.Config(
        app,
        host=settings.rest_host,
        port=settings.rest_port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        access_log=False,  # the audit line (gateway/audit.py) is the one line per request
        # A backstop behind the admission's 429 (which says Retry-After and is audited): uvicorn
        # answers a bare 503 beyond this many connections and requests.
        limit_concurrency=settings.max_in_flight + REST_CONNECTION_MARGIN,
        # The service drains first; this bounds what is left (a response still being written).
        timeout_graceful_shutdown=max(1, round(settings.drain_s)),
        **(tls.uvicorn_options() if tls else {}),
    )
    return RestServer(config)
