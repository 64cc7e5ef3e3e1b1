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
import threading
from collections.abc import Iterator
from typing import Any

from avn.pipeline.backend import ModelBackend
from avn.pipeline.pipeline import Pipeline
from gateway.admission import Admission
from gateway.audit import configure_audit_log
from gateway.auth import authenticator_from
from gateway.cache import build_cache
from gateway.configuration import EXIT_CONFIGURATION, ConfigurationError, check_startup, load_settings
from gateway.logs import configure_logging
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.tls import tls_files
from gateway.tracing import configure_tracing

logger = logging.getLogger(__name__)


def build_backend(settings: Settings) -> ModelBackend:
    """The model backend ``AVN_BACKEND`` names."""
    if settings.backend == "embedded":
        from avn.serving.inprocess import InProcessBackend  # noqa: PLC0415 — loads torch models

        return InProcessBackend.from_folder(settings.model_store, threads=settings.model_threads)
    if settings.backend == "oip":
        from gateway.oip_backend import OipBackend  # noqa: PLC0415

        return OipBackend.from_settings(settings)
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
        operating_point=settings.operating_point,
        image_threads=settings.image_threads,
    )


async def serve(settings: Settings, pipeline: Pipeline | None = None) -> None:
    """Serve gRPC and REST until SIGTERM or SIGINT (or until cancelled); then shut down gracefully:

    1. both protocols go not ready at once — ``/readyz`` 503, gRPC health ``NOT_SERVING`` — and new
       requests are refused with 503 / ``UNAVAILABLE`` (``ShuttingDown``, Retry-After): load
       balancers and clients move to another replica;
    2. the requests in flight get up to ``AVN_DRAIN_S`` to finish (a second signal cuts this short);
    3. both servers stop, the pipeline closes, the last spans are exported; the process exits 0.
    """
    from gateway.grpc_server import start_grpc_server  # noqa: PLC0415 — generates the avn.v1 stubs
    from gateway.rest import create_app, rest_server  # noqa: PLC0415

    tracing = configure_tracing(settings)
    pipeline = pipeline or build_pipeline(settings)
    metrics = GatewayMetrics()
    authenticator = authenticator_from(settings)  # one for both servers: one view of the keys file
    admission = Admission(settings.max_in_flight)  # one in-flight limit for both protocols
    tls = tls_files(settings)
    grpc_server = await start_grpc_server(
        pipeline,
        settings.grpc_host,
        settings.grpc_port,
        deadline_s=settings.deadline_s,
        metrics=metrics,
        authenticator=authenticator,
        credentials=tls.grpc_credentials() if tls else None,
        admission=admission,
    )
    rest = rest_server(
        create_app(pipeline, settings, metrics, authenticator=authenticator, admission=admission), settings
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
    signals = ShutdownSignals()
    rest_task = asyncio.create_task(rest.serve(), name="avn-rest")
    try:
        with signals.installed():
            # The REST server ends by itself only when it cannot run (its port taken): stop then too.
            await _first_of(signals.stop.wait(), rest_task)
            if not rest_task.done():
                logger.info("stopping: not ready, refusing new requests, draining %d in flight", admission.in_flight)
                admission.start_draining()
                await grpc_server.report_not_serving()
                await _first_of(admission.drained(settings.drain_s), signals.hurry.wait())
                if admission.in_flight:
                    logger.warning("stopping with %d requests still in flight: they are cut off", admission.in_flight)
    finally:
        rest.should_exit = True
        await asyncio.gather(rest_task, return_exceptions=True)
        await grpc_server.stop(grace_s=STOP_GRACE_S)
        await pipeline.close()
        if tracing is not None:
            tracing.shutdown()  # exports the spans still queued
    if rest_task.exception() is not None:
        raise rest_task.exception()


STOP_GRACE_S = 1.0  # for gRPC calls still there after the drain (a cut-short drain): then cancelled


async def _first_of(*awaitables: Any) -> None:
    """Wait until the first of ``awaitables`` is done; cancel the others (but a task passed in, which
    stays its owner's)."""
    tasks = [item if isinstance(item, asyncio.Task) else asyncio.ensure_future(item) for item in awaitables]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task, item in zip(tasks, awaitables, strict=True):
        if task in pending and task is not item:
            task.cancel()


class ShutdownSignals:
    """SIGTERM and SIGINT while serving: the first asks for a graceful stop (``stop``), a second
    one to cut the drain short (``hurry``). The handlers set before are put back afterwards."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only: a server on another thread is stopped by cancelling
            return
        loop = asyncio.get_running_loop()
        previous = {sig: signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self._received)) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _received(self) -> None:
        (self.hurry if self.stop.is_set() else self.stop).set()


SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: leave the serving loop and clean up."""


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """For the block, SIGINT and SIGTERM raise :class:`Stopped` in the main thread: a signal during
    start-up (models loading, TorchServe starting) ends the command cleanly. While :func:`serve`
    serves, its own handlers take over (:class:`ShutdownSignals`: a graceful drain) and put these
    back afterwards."""
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
    configure_logging(loaded.settings.log_level)
    configure_audit_log(loaded.settings.audit_log_file)
    for warning in warnings:
        logger.warning("%s", warning)
    with stopping_on_signals(), contextlib.suppress(Stopped):
        asyncio.run(serve(loaded.settings))


if __name__ == "__main__":
    main()
