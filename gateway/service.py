"""The gateway process: settings → model backend → cache → pipeline → gRPC and REST servers.

``python -m gateway.service`` serves gRPC on ``AVN_GRPC_HOST:AVN_GRPC_PORT`` and REST on
``AVN_REST_HOST:AVN_REST_PORT`` from one event loop, with the models behind ``AVN_BACKEND``
(``torchserve``: an already running TorchServe at ``AVN_TORCHSERVE_GRPC``; ``embedded``: the
archives of ``AVN_MODEL_STORE`` loaded in this process). This is the gateway container's command
in ``docker-compose.yml``; both servers share one pipeline, one cache and one metrics registry,
and, when an OTLP endpoint is configured, one trace exporter (:mod:`gateway.tracing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

from avn.pipeline.backend import ModelBackend
from avn.pipeline.pipeline import Pipeline
from gateway.audit import configure_audit_log
from gateway.auth import authenticator_from
from gateway.cache import build_cache
from gateway.configuration import EXIT_CONFIGURATION, ConfigurationError, check_startup, load_settings
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.tls import tls_files
from gateway.tracing import configure_tracing

logger = logging.getLogger(__name__)


def build_backend(settings: Settings) -> ModelBackend:
    """The model backend ``AVN_BACKEND`` names."""
    if settings.backend == "embedded":
        from avn.serving.inprocess import InProcessBackend  # noqa: PLC0415 — loads torch models

        return InProcessBackend.from_folder(settings.model_store)
    from gateway.torchserve_backend import TorchServeBackend  # noqa: PLC0415

    return TorchServeBackend.from_settings(settings)


def build_pipeline(settings: Settings, backend: ModelBackend | None = None) -> Pipeline:
    """A pipeline with the configured backend (or ``backend``), cache, input limits and note threshold."""
    return Pipeline(
        backend or build_backend(settings),
        build_cache(settings),
        max_image_bytes=settings.max_payload_bytes,
        max_decode_bytes=settings.max_decode_bytes,
        max_study_radiographs=settings.max_study_radiographs,
        max_study_bytes=settings.max_study_bytes,
        note_threshold=settings.note_threshold,
    )


async def serve(settings: Settings, pipeline: Pipeline | None = None) -> None:
    """Serve gRPC and REST until cancelled; then stop both and close the pipeline."""
    from gateway.grpc_server import start_grpc_server  # noqa: PLC0415 — generates the avn.v1 stubs
    from gateway.rest import create_app, serve_rest  # noqa: PLC0415

    tracing = configure_tracing(settings)
    pipeline = pipeline or build_pipeline(settings)
    metrics = GatewayMetrics()
    authenticator = authenticator_from(settings)  # one for both servers: one view of the keys file
    tls = tls_files(settings)
    grpc_server = await start_grpc_server(
        pipeline,
        settings.grpc_host,
        settings.grpc_port,
        deadline_s=settings.deadline_s,
        metrics=metrics,
        authenticator=authenticator,
        credentials=tls.grpc_credentials() if tls else None,
    )
    logger.info(
        "gRPC on %s:%d, REST on %s:%d (%s, authentication %s)",
        settings.grpc_host,
        grpc_server.port,
        settings.rest_host,
        settings.rest_port,
        ("mutual TLS" if tls.mutual else "TLS") if tls else "plain text",
        authenticator.mode,
    )
    try:
        await serve_rest(create_app(pipeline, settings, metrics, authenticator=authenticator), settings)
    finally:
        await grpc_server.stop()
        await pipeline.close()
        if tracing is not None:
            tracing.shutdown()  # exports the spans still queued


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: leave the serving loop and clean up."""


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """For the block, SIGINT and SIGTERM raise :class:`Stopped` in the main thread. While uvicorn
    serves it takes them over, shuts down gracefully and then re-raises them: without this the
    default handler would end the process there, before the gRPC server drains, the pipeline
    closes and the last spans are exported."""
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def main() -> None:
    """The container's command: settings checked before anything binds (exit 2 and one line on
    stderr when one cannot work), then serve until stopped."""
    try:
        loaded = load_settings()
        warnings = check_startup(loaded)
    except ConfigurationError as error:
        print(f"gateway: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIGURATION) from None
    logging.basicConfig(level=loaded.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_audit_log(loaded.settings.audit_log_file)
    for warning in warnings:
        logger.warning("%s", warning)
    with stopping_on_signals(), contextlib.suppress(Stopped):
        asyncio.run(serve(loaded.settings))


if __name__ == "__main__":
    main()
