"""The gRPC front door: the ``avn.v1.Diagnosis`` service over a :class:`~avn.pipeline.pipeline.Pipeline`.

Besides the service itself the server carries the standard ``grpc.health.v1`` health service
(SERVING only while every model answers: a background task asks the pipeline every few seconds)
and server reflection (``grpcurl`` and similar tools discover the contract without the .proto).

* Every call but the health checks needs an API key (``authorization: Bearer <key>`` metadata) and
  is audited: :class:`gateway.grpc_interceptor.GatewayInterceptor`. Without an authenticator the
  server refuses every such call (secure by default); pass :class:`gateway.auth.OpenAuthenticator`
  for a loopback tool.
* TLS (and mutual TLS) when ``credentials`` are given (:mod:`gateway.tls`).

* Messages up to 64 MiB both ways (a 16-bit 3000×3000 DICOM is ~18 MB), more when the pipeline's
  image or study limit is higher, so that the pipeline names the limit a request is over.
* Every request runs under a deadline: the client's, capped by the server's default when the
  client sets none or a longer one.
* Failures are mapped once, by :func:`gateway.errors.status_of`; the trailing metadata carries the
  error type (``avn-error-type``), ``retry-after`` seconds for UNAVAILABLE, and ``x-request-id``.
  A client may send its own ``x-request-id`` metadata; otherwise the server makes one.
* Every call is a trace span (:mod:`gateway.tracing`) continuing the client's ``traceparent``
  metadata; its trace id is in the trailing metadata (``x-trace-id``), failed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from avn.pipeline.pipeline import DEFAULT_DEADLINE_S, Pipeline, accepted_request_id
from avn.pipeline.results import (
    DiagnoseOptions,
    DiagnoseRequest,
    Diagnosis,
    ImagePayload,
    StudyDiagnosis,
    StudyRequest,
)
from avn.pipeline.tracing import mark_failed
from gateway import audit, proto
from gateway.admission import Admission
from gateway.auth import Authenticator, KeyAuthenticator
from gateway.errors import REQUEST_ID_KEY, as_gateway_error, error_metadata, status_of
from gateway.grpc_interceptor import GatewayInterceptor
from gateway.metrics import GatewayMetrics
from gateway.proto_mapping import from_proto, to_proto
from gateway.tracing import TRACE_ID_KEY, request_span, trace_id_of

logger = logging.getLogger(__name__)

STUBS = proto.load()
pb = STUBS.messages
SERVICE_NAME = proto.SERVICE_NAME
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MESSAGE_OVERHEAD_BYTES = 1024 * 1024  # the request's other fields around the image bytes
HEALTH_INTERVAL_S = 5.0
PROTOCOL = "grpc"
METHODS = {"diagnose": "Diagnose", "study": "DiagnoseStudy", "models": "ListModels"}  # operation → RPC
TRANSPORT_MARGIN_RPCS = 16  # calls beyond the in-flight limit the transport still lets in: health, reflection


# ---------------------------------------------------------------- the service


class DiagnosisServicer(STUBS.services.DiagnosisServicer):
    """``avn.v1.Diagnosis``: protobuf in, pipeline, protobuf out. Every call is counted and timed in
    ``metrics`` (shared with the REST app of the same process, so ``/metrics`` shows both)."""

    def __init__(
        self,
        pipeline: Pipeline,
        deadline_s: float = DEFAULT_DEADLINE_S,
        metrics: GatewayMetrics | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.deadline_s = deadline_s
        self.admission = admission or Admission()
        self.metrics = metrics or GatewayMetrics()
        self.metrics.track_pipeline(pipeline)

    async def Diagnose(self, request: pb.DiagnoseRequest, context: grpc.aio.ServicerContext) -> pb.DiagnoseResponse:
        request_id = _request_id(context)
        async with self._observed("diagnose", context, request_id):
            result = await self.pipeline.diagnose(
                diagnose_request_from_proto(request), request_id=request_id, timeout_s=self._timeout(context)
            )
            self.metrics.observe_diagnosis(result)
            audit.note_models(result.models)
        return diagnosis_to_proto(result)

    async def DiagnoseStudy(self, request: pb.StudyRequest, context: grpc.aio.ServicerContext) -> pb.StudyResponse:
        request_id = _request_id(context)
        async with self._observed("study", context, request_id):
            result = await self.pipeline.diagnose_study(
                study_request_from_proto(request), request_id=request_id, timeout_s=self._timeout(context)
            )
            for radiograph in result.radiographs:
                self.metrics.observe_diagnosis(radiograph.result)
                audit.note_models(radiograph.result.models)
        return study_to_proto(result)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        request_id = _request_id(context)
        async with self._observed("models", context, request_id):
            infos = await self.pipeline.models()
            audit.note_models(infos)
        return pb.ListModelsResponse(models=[to_proto(info, pb) for info in infos])

    @contextlib.asynccontextmanager
    async def _observed(
        self, operation: str, context: grpc.aio.ServicerContext, request_id: str
    ) -> AsyncIterator[None]:
        """The call's trace span (continuing the client's ``traceparent`` metadata), counted in flight;
        then count and time it whatever the outcome, and fill in its audit line. A failure ends the
        RPC with its mapped status; the trace id goes back in the trailing metadata either way."""
        audit.note_request(operation, request_id)
        started = time.perf_counter()
        error: str | None = None
        failure: Exception | None = None
        trace_id = ""
        method = METHODS[operation]
        try:
            with (
                request_span(
                    f"{SERVICE_NAME}/{method}",
                    dict(context.invocation_metadata() or ()),
                    **{"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method},
                    **{"avn.operation": operation},
                ) as span,
                self.metrics.answering(PROTOCOL, operation),
            ):
                trace_id = trace_id_of(span)
                audit.note_trace(trace_id)
                try:
                    with self.admission.admitted():  # the in-flight limit, shared with REST
                        yield
                except Exception as caught:
                    failure, typed = caught, as_gateway_error(caught)
                    error = type(typed).__name__
                    audit.note_outcome(error)
                    mark_failed(span, typed)
                except asyncio.CancelledError:  # the client went away or its deadline passed
                    error = "Cancelled"
                    audit.note_outcome(error)
                    raise
            if failure is not None:
                await _abort(context, failure, request_id, trace_id)  # raises: the RPC ends here
            if trace_id:
                context.set_trailing_metadata(((TRACE_ID_KEY, trace_id),))
        finally:
            self.metrics.observe_request(PROTOCOL, operation, time.perf_counter() - started, error)

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.deadline_s if remaining is None else min(remaining, self.deadline_s)


def _request_id(context: grpc.aio.ServicerContext) -> str:
    given = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY)
    return accepted_request_id(given)


async def _abort(context: grpc.aio.ServicerContext, error: Exception, request_id: str, trace_id: str) -> None:
    """End the RPC with the mapped status; untyped errors are logged and reported as INTERNAL."""
    typed = as_gateway_error(error)
    if typed is not error:
        logger.error("request %s failed unexpectedly", request_id, exc_info=error)
    elif status_of(typed).http_status >= 500:
        logger.warning("request %s: %s: %s", request_id, type(typed).__name__, typed)
    else:  # the client's problem, told to the client; kept in the log at a quieter level
        logger.info("request %s rejected: %s: %s", request_id, type(typed).__name__, typed)
    await context.abort(
        status_of(typed).grpc_code,
        f"{typed} (request {request_id})",
        trailing_metadata=(
            *error_metadata(typed),
            (REQUEST_ID_KEY, request_id),
            *(((TRACE_ID_KEY, trace_id),) if trace_id else ()),
        ),
    )


# ---------------------------------------------------------------- protobuf ↔ dataclasses
#
# One generic mapping by field name (gateway/proto_mapping.py). The requests are the exception the
# proto lays out differently: include_overlay sits beside the options, and a single radiograph's
# image and media type on the request itself.


def options_from_proto(request: pb.DiagnoseRequest | pb.StudyRequest) -> DiagnoseOptions:
    return from_proto(DiagnoseOptions, request.options, given={"include_overlay": request.include_overlay})


def diagnose_request_from_proto(request: pb.DiagnoseRequest) -> DiagnoseRequest:
    return DiagnoseRequest(payload=from_proto(ImagePayload, request), options=options_from_proto(request))


def study_request_from_proto(request: pb.StudyRequest) -> StudyRequest:
    return from_proto(StudyRequest, request, given={"options": options_from_proto(request)})


def diagnosis_to_proto(result: Diagnosis) -> pb.DiagnoseResponse:
    return to_proto(result, pb)


def study_to_proto(result: StudyDiagnosis) -> pb.StudyResponse:
    return to_proto(result, pb)


# ---------------------------------------------------------------- the server


@dataclass
class RunningServer:
    """A started server: its bound port and how to stop it."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    health_task: asyncio.Task

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def report_not_serving(self) -> None:
        """NOT_SERVING from now on, whatever the models say (load balancers stop sending work here)."""
        self.health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.health_task
        await self.health.enter_graceful_shutdown()  # sets NOT_SERVING and ignores later updates

    async def stop(self, grace_s: float = 2.0) -> None:
        """Report NOT_SERVING, then let calls in flight finish for ``grace_s`` before cancelling them."""
        await self.report_not_serving()
        await self.server.stop(grace_s)


async def start_grpc_server(
    pipeline: Pipeline,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    max_message_bytes: int | None = None,
    health_interval_s: float = HEALTH_INTERVAL_S,
    metrics: GatewayMetrics | None = None,
    authenticator: Authenticator | None = None,
    credentials: grpc.ServerCredentials | None = None,
    admission: Admission | None = None,
) -> RunningServer:
    """Bind (``port`` 0: a free port), start, and report health once before returning.

    ``max_message_bytes`` defaults to 64 MiB, or more when the pipeline accepts larger images or
    studies, so that the pipeline — not the transport — rejects an oversized one with a specific message.
    ``authenticator`` None refuses every call but the health checks; ``credentials`` None serves plain text.
    ``admission`` (shared with the REST app of the process) limits the calls in flight; the
    transport's own cap (``maximum_concurrent_rpcs``) is that limit plus a margin for health checks.
    """
    largest_request = max(pipeline.max_image_bytes, pipeline.max_study_bytes) + MESSAGE_OVERHEAD_BYTES
    max_message_bytes = max_message_bytes or max(MAX_MESSAGE_BYTES, largest_request)
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    admission = admission or Admission()
    interceptor = GatewayInterceptor(authenticator or KeyAuthenticator(None))
    server = grpc.aio.server(
        options=options,
        interceptors=[interceptor],
        # A backstop behind the admission's answer (which says Retry-After and is audited).
        maximum_concurrent_rpcs=admission.max_in_flight + TRANSPORT_MARGIN_RPCS,
    )
    servicer = DiagnosisServicer(pipeline, deadline_s, metrics, admission)
    STUBS.services.add_DiagnosisServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {host}:{port}")
    await server.start()
    await _report_health(pipeline, health_servicer)
    task = asyncio.create_task(_watch_health(pipeline, health_servicer, health_interval_s), name="avn-grpc-health")
    logger.info("gRPC %s serving on %s:%d", SERVICE_NAME, host, bound)
    return RunningServer(server, bound, health_servicer, task)


@contextlib.asynccontextmanager
async def grpc_server(pipeline: Pipeline, **options) -> AsyncIterator[RunningServer]:
    """A server on a free loopback port for the duration of the block (tests, benchmarks)."""
    running = await start_grpc_server(pipeline, "127.0.0.1", 0, **options)
    try:
        yield running
    finally:
        await running.stop(grace_s=0.5)


class BackgroundGrpcServer:
    """A gRPC server on its own event loop in a daemon thread, for synchronous callers (tests, CLI).

    The pipeline and its backend must only be used from this server's loop while it runs.
    """

    def __init__(self, pipeline: Pipeline, host: str = "127.0.0.1", port: int = 0, **options) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="avn-grpc-server", daemon=True)
        self._thread.start()
        self.host = host
        try:
            self.running: RunningServer = self._run(start_grpc_server(pipeline, host, port, **options))
        except BaseException:
            self._close_loop()
            raise

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace_s: float = 0.5) -> None:
        try:
            self._run(self.running.stop(grace_s))
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> BackgroundGrpcServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


async def _report_health(pipeline: Pipeline, servicer: health.aio.HealthServicer) -> None:
    ready = await pipeline.ready()
    status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME):  # "" is the whole server, by the health protocol's convention
        await servicer.set(service, status)


async def _watch_health(pipeline: Pipeline, servicer: health.aio.HealthServicer, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await _report_health(pipeline, servicer)
        except Exception:  # the watcher must outlive any one failed check
            logger.exception("health check failed")
