"""The REST app: :func:`create_app` assembles the routers, the error handlers and the request-id
echo over one pipeline, and :func:`serve_rest` serves it with uvicorn."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from avn.pipeline.pipeline import Pipeline
from gateway.cases import CaseBank
from gateway.metrics import GatewayMetrics
from gateway.rest.dependencies import REQUEST_ID_HEADER
from gateway.rest.error_handlers import add_error_handlers
from gateway.rest.routers import diagnosis, service, web
from gateway.settings import Settings
from gateway.tracing import TRACE_ID_KEY

PipelineSource = Pipeline | Callable[[], Pipeline | Awaitable[Pipeline]]
# FastAPI's own OpenTelemetry spans and logs stay off: the gateway's request span
# (gateway/tracing.py, opened per operation) is the one REST and gRPC share, with the trace id in
# the answer and no PHI (FastAPI's would record exception messages and stack traces). FastAPI
# versions without native telemetry keep the option as an unused extra.
NO_NATIVE_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


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
    )
    # What the routers' dependencies (gateway/rest/dependencies.py) hand to the handlers.
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.case_bank = case_bank
    if isinstance(pipeline, Pipeline):  # usable without running the lifespan too
        app.state.pipeline = pipeline
        metrics.track_pipeline(pipeline)
    add_error_handlers(app)
    for router in (diagnosis.router, service.router, web.router):
        app.include_router(router)
    web.mount_web_app(app)
    app.middleware("http")(_echo_request_id)
    return app


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


async def serve_rest(app: FastAPI, settings: Settings) -> None:
    """Serve ``app`` with uvicorn on ``AVN_REST_HOST:AVN_REST_PORT`` in the running event loop
    (beside the gRPC server) until cancelled."""
    import uvicorn  # noqa: PLC0415 — only the serving process needs it

    config = uvicorn.Config(
        app, host=settings.rest_host, port=settings.rest_port, log_level=settings.log_level.lower(), lifespan="on"
    )
    await uvicorn.Server(config).serve()
