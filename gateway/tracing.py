"""The gateway's traces: the OpenTelemetry SDK when configured, and the server span of each request.

* :func:`configure_tracing`: off unless an OTLP endpoint is configured (``AVN_OTLP_ENDPOINT``, or
  the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``); then a
  tracer provider exports batches of spans over OTLP/gRPC. Sampling and the rest follow the SDK's
  own ``OTEL_*`` variables. Without it every span is the API's no-op.
* :func:`request_span`: the root span of one REST or gRPC request, continuing the client's W3C
  ``traceparent`` (an HTTP header, or gRPC metadata of the same name). The pipeline's spans
  (:mod:`avn.pipeline.tracing`) hang below it.
* The trace id goes back to the client (``x-trace-id``: an HTTP response header, gRPC trailing
  metadata) and into the request's audit line (:mod:`gateway.audit`), so a slow or failed answer
  leads to its trace. With tracing off the trace id is the client's, when it sent a traceparent.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, format_trace_id

from avn.pipeline.tracing import mark_failed

logger = logging.getLogger(__name__)

TRACER = trace.get_tracer("avn.gateway")
TRACE_ID_KEY = "x-trace-id"  # HTTP response header and gRPC trailing metadata
# The SDK's own variables that name a collector: either turns tracing on, as AVN_OTLP_ENDPOINT does.
OTEL_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_wanted(settings: Any, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(settings.otlp_endpoint) or any(environ.get(name) for name in OTEL_ENDPOINT_VARIABLES)


def configure_tracing(settings: Any) -> Any | None:
    """Install the SDK's tracer provider with an OTLP/gRPC exporter when tracing is wanted; return it
    (call ``shutdown()`` at exit: it flushes the last spans), or None when tracing stays off."""
    if not tracing_wanted(settings):
        return None
    # The SDK loads only when tracing is on.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.trace_service_name}))
    # endpoint None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    trace.set_tracer_provider(provider)
    logger.info("tracing on: OTLP/gRPC to %s", settings.otlp_endpoint or "the OTEL_EXPORTER_OTLP_* endpoint")
    return provider


@contextlib.contextmanager
def request_span(name: str, carrier: Mapping[str, str], **attributes: Any) -> Iterator[Span]:
    """The server span of one request, the child of the client's ``traceparent`` in ``carrier``
    (header or metadata names in lower case) when it sent one. A failure sets its status to ERROR
    with the error's type only."""
    parent = propagate.extract(carrier)
    with TRACER.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attributes or None,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as error:
            mark_failed(current, error)
            raise


def trace_id_of(current: Span) -> str:
    """32 hex digits, or '' when the span belongs to no trace (tracing off and no traceparent)."""
    context = current.get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else ""
