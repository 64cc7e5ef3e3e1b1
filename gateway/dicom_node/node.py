"""The DICOM node put together: settings → pipeline → spool → Storage SCP, diagnosis worker, delivery worker.

* The Storage SCP (:mod:`gateway.dicom_node.scp`, on pynetdicom's threads) spools each received
  radiograph durably, answers success, and wakes the diagnosis worker.
* The diagnosis worker takes the received files oldest first through the gateway's own pipeline
  (:func:`gateway.service.build_pipeline`: the configured backend, cache, limits and operating
  point) with the DICOM outputs asked for, puts the SR and the annotated copy in the outbox and
  wakes the delivery worker. A file the pipeline refuses for what it is — undecodable, too large, a
  body part without a hip, no femoral head found — goes to ``failed/`` with its reason, and no
  output is sent for it. When the models cannot answer (TorchServe down, a deadline, a setting the
  models do not support) the file waits and is tried again; an unexpected error is tried
  :data:`MAX_UNEXPECTED_ERRORS` times before the file goes to ``failed/``.
* The delivery worker C-STOREs what is pending to the destination (:mod:`gateway.dicom_node.delivery`);
  while the destination is unavailable it waits, doubling the wait up to ``dicom_retry_max_s``.

Both workers run on one event loop; the spool (:mod:`gateway.dicom_node.spool`) is the only state,
so a restart resumes where the last run stopped. Logs name spool ids, error types and the
pipeline's messages (which carry no patient data), never anything from a DICOM header; the loggers
of pynetdicom and highdicom are kept at WARNING because below that they describe the messages
they carry and the data sets they copy from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from avn.pipeline.errors import (
    DeadlineExceeded,
    InvalidArgument,
    InvalidImage,
    ModelUnavailable,
    NoFemoralHead,
    PayloadTooLarge,
)
from avn.pipeline.pipeline import Pipeline
from avn.pipeline.results import DiagnoseOptions, DiagnoseRequest, ImagePayload
from gateway.configuration import (
    EXIT_CONFIGURATION,
    ConfigurationError,
    check_dicom_node_startup,
    check_startup,
    load_settings,
)
from gateway.dicom_node.delivery import Backoff, DestinationUnavailable, Sender
from gateway.dicom_node.scp import start_storage_scp
from gateway.dicom_node.spool import Failure, PendingOutput, ReceivedFile, Spool
from gateway.logs import configure_logging, quiet_dicom_libraries
from gateway.service import Stopped, build_pipeline, stopping_on_signals
from gateway.settings import Settings, parse_dicom_destination
from gateway.tracing import configure_tracing

logger = logging.getLogger(__name__)

# The pipeline's refusals of the input itself: trying again gives the same answer.
INPUT_FAILURES: dict[type[Exception], str] = {
    InvalidImage: "invalid-image",
    PayloadTooLarge: "too-large",
    NoFemoralHead: "no-femoral-head",
}
# The service cannot answer now; the input is not at fault (InvalidArgument: the node's own operating
# point is not in the staging card, a setting to fix): the file waits.
SERVICE_FAILURES = (ModelUnavailable, DeadlineExceeded, InvalidArgument)
MAX_UNEXPECTED_ERRORS = 3
# What the node asks of the pipeline: the SR and the annotated copy; everything else is the node's settings.
NODE_OPTIONS = DiagnoseOptions(include_dicom=True)
SR, ANNOTATED = "sr", "annotated"  # the outputs' names in the outbox, in the order they are sent


class DicomNode:
    """The node's workers around one pipeline and one spool; :meth:`run` until cancelled."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        if settings.dicom_destination is None:
            raise ValueError("the DICOM node needs a destination (dicom_destination)")
        self.settings = settings
        self.pipeline = pipeline
        self.spool = Spool(settings.dicom_spool)
        self.sender = Sender(settings.dicom_ae_title, parse_dicom_destination(settings.dicom_destination))
        self._unexpected_errors: dict[str, int] = {}  # per received file; a restart forgives them
        self._received = asyncio.Event()
        self._outputs_ready = asyncio.Event()

    async def run(self) -> None:
        """Resume the spool, listen, and work until cancelled; then stop listening and close the pipeline."""
        await asyncio.to_thread(self.spool.prepare)
        loop = asyncio.get_running_loop()
        server = start_storage_scp(self.settings, self.spool, lambda: loop.call_soon_threadsafe(self._received.set))
        logger.info(
            "DICOM node %s on %s:%d, sending to %s; %d received files and %d outputs to resume",
            self.settings.dicom_ae_title,
            self.settings.dicom_host,
            self.settings.dicom_port,
            self.sender.destination,
            len(self.spool.received()),
            len(self.spool.pending_outputs()),
        )
        try:
            await asyncio.gather(self._diagnose_received(), self._deliver_outputs())
        finally:
            server.shutdown()
            await self.pipeline.close()

    # ---------------------------------------------------------------- diagnosis worker

    async def _diagnose_received(self) -> None:
        backoff = self._backoff()
        while True:
            self._received.clear()  # before looking: a file that arrives meanwhile sets it again
            for received in self.spool.received():
                if not await self._diagnosed(received):
                    await asyncio.sleep(backoff.next_wait_s())
                    break
                backoff.reset()
            else:
                await self._received.wait()

    async def _diagnosed(self, received: ReceivedFile) -> bool:
        """Diagnose one received file into the outbox or ``failed/``; False: it must wait and be tried again."""
        data = await asyncio.to_thread(received.path.read_bytes)
        request = DiagnoseRequest(ImagePayload(data), NODE_OPTIONS)
        try:
            # No deadline of the whole diagnosis: no client waits, and a slow machine must not fail files
            # over and over; each TorchServe call is still bounded by deadline_s (the backend's own).
            result = await self.pipeline.diagnose(request, request_id=received.item_id)
        except tuple(INPUT_FAILURES) as error:
            await self._fail(received, Failure(input_failure_reason(error), type(error).__name__, str(error)))
            return True
        except SERVICE_FAILURES as error:
            logger.warning("%s waits: %s: %s", received.item_id, type(error).__name__, error)
            return False
        except Exception as error:  # a bug must not stop the node: the file is retried, then set aside
            return await self._unexpected(received, error)
        outputs = {SR: result.dicom_sr, ANNOTATED: result.dicom_annotated}
        await asyncio.to_thread(self.spool.store_outputs, received, outputs)
        logger.info("diagnosed %s: %d femoral heads; SR and annotated copy queued", received.item_id, len(result.heads))
        self._outputs_ready.set()
        return True

    async def _unexpected(self, received: ReceivedFile, error: Exception) -> bool:
        # Only the type is logged: the text of an unexpected error may quote anything it saw.
        count = self._unexpected_errors.get(received.item_id, 0) + 1
        self._unexpected_errors[received.item_id] = count
        name = type(error).__name__
        logger.error("%s: unexpected %s (try %d of %d)", received.item_id, name, count, MAX_UNEXPECTED_ERRORS)
        if count < MAX_UNEXPECTED_ERRORS:
            return False
        await self._fail(received, Failure("internal-error", name, f"unexpected {name} on {count} tries"))
        return True

    async def _fail(self, received: ReceivedFile, failure: Failure) -> None:
        await asyncio.to_thread(self.spool.fail_received, received, failure)
        self._unexpected_errors.pop(received.item_id, None)
        logger.warning("%s not diagnosed, moved to failed/ (%s): %s", received.item_id, failure.reason, failure.message)

    # ---------------------------------------------------------------- delivery worker

    async def _deliver_outputs(self) -> None:
        backoff = self._backoff()
        while True:
            self._outputs_ready.clear()
            pending = self.spool.pending_outputs()
            if not pending:
                await self._outputs_ready.wait()
                continue
            try:
                await asyncio.to_thread(self.sender.send, pending, self._delivered, self._refused)
            except DestinationUnavailable as error:
                wait = backoff.next_wait_s()
                logger.warning("%s; %d outputs wait, next try in %.1f s", error, len(pending), wait)
                await asyncio.sleep(wait)
            else:
                backoff.reset()

    def _delivered(self, output: PendingOutput) -> None:
        self.spool.delivered(output)
        logger.info("delivered %s/%s to %s", output.item_id, output.name, self.sender.destination)

    def _refused(self, output: PendingOutput, failure: Failure) -> None:
        self.spool.fail_output(output, failure)
        logger.error("%s/%s moved to failed/ (%s): %s", output.item_id, output.name, failure.reason, failure.message)

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.dicom_retry_initial_s, self.settings.dicom_retry_max_s)


def input_failure_reason(error: Exception) -> str:
    """The reason code of one of :data:`INPUT_FAILURES` (or of a subclass of one)."""
    return next(reason for kind, reason in INPUT_FAILURES.items() if isinstance(error, kind))


async def run_node(settings: Settings, pipeline: Pipeline | None = None) -> None:
    """The node over ``pipeline`` (default: the configured one), with tracing when configured, until cancelled."""
    quiet_dicom_libraries()
    tracing = configure_tracing(settings)
    try:
        await DicomNode(settings, pipeline or build_pipeline(settings)).run()
    finally:
        if tracing is not None:
            tracing.shutdown()


def serve_until_stopped(settings: Settings) -> None:
    """Run the node until SIGINT or SIGTERM; the spool keeps whatever is unfinished for the next start."""
    with stopping_on_signals(), contextlib.suppress(Stopped):
        asyncio.run(run_node(settings))


def main() -> None:
    """``python -m gateway.dicom_node``: settings from the environment and the settings file, checked
    before anything binds (exit 2 and one line on stderr when one cannot work), then the node."""
    try:
        loaded = load_settings()
        warnings = check_startup(loaded, serves_api=False)
        check_dicom_node_startup(loaded)
    except ConfigurationError as error:
        print(f"dicom-node: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIGURATION) from None
    configure_logging(loaded.settings.log_level)
    for warning in warnings:
        logger.warning("%s", warning)
    serve_until_stopped(loaded.settings)
