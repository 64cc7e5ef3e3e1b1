"""The TorchServe backend: the pipeline's model calls over TorchServe's gRPC inference API.

Requests and answers are the wire format of ``avn/serving/codec.py`` (``services/README.md``):
classifier crops as ``.npy`` bytes in the ``data`` input (plus an optional ``cam_stage`` input),
the radiograph as ``.npy`` (or a 16-bit PNG when a float32 copy would not fit one message), JSON
answers. Model cards (version, labels, input size) come from the gRPC management API
(``DescribeModel`` with ``customized=true``).

One gRPC channel per backend object (one per process in the gateway). The channels are grpcio's
thread-safe synchronous ones, awaited through their futures: any number of concurrent requests,
from any event loop or thread, share them — a ``grpc.aio`` channel would be tied to the event loop
it was created on. Cancelling the awaiting task cancels the RPC.

Failures become gateway errors: TorchServe down or a model without a ready worker →
``ModelUnavailable`` (with a retry hint), the call's deadline → ``DeadlineExceeded``, a radiograph
the detector rejects → ``InvalidImage``, anything else → ``Internal`` (details in the log only).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from google.protobuf import empty_pb2

from avn.pipeline.backend import CLASSIFIER_MODELS, MODELS, Classification, Detections, ModelInfo, operating_points_of
from avn.pipeline.errors import (
    DeadlineExceeded,
    DiagnosisError,
    Internal,
    InvalidImage,
    ModelUnavailable,
    PayloadTooLarge,
)
from avn.pipeline.tracing import note_batch_size
from avn.serving.codec import encode_npy
from avn.serving.torchserve import MAX_MESSAGE_BYTES
from gateway.settings import WORKERS_ENV_PREFIX
from gateway.torchserve_stubs import TorchServeStubs, load_stubs

logger = logging.getLogger(__name__)

DETECTION = "detection"
INFERENCE = "inference"  # the two token kinds of TorchServe's key file
MANAGEMENT = "management"
READY = "READY"
# Room for the protobuf envelope around the largest body TorchServe accepts (max_request_size).
CHANNEL_MESSAGE_BYTES = MAX_MESSAGE_BYTES + 1024 * 1024
NPY_HEADER_BYTES = 128
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", CHANNEL_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", CHANNEL_MESSAGE_BYTES),
    # After TorchServe comes back, reconnect within seconds instead of gRPC's default back-off (up to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
UNAVAILABLE_LOG_INTERVAL_S = 30.0  # while TorchServe is down, one warning per interval, not one per request
# TorchServe answers these (over gRPC as INTERNAL or NOT_FOUND) while a model is not servable.
NOT_SERVABLE_MARKERS = ("model not found", "no worker", "not ready", "worker died", "worker is not")


class TorchServeBackend:
    """:class:`avn.pipeline.backend.ModelBackend` over a TorchServe's gRPC APIs.

    ``inference_target`` / ``management_target`` are ``host:port`` of its gRPC inference and
    management ports. With TorchServe's token authorisation on, give the tokens (``*_key``) or
    its ``key_file.json`` (``key_file``: re-read whenever TorchServe rewrites it, e.g. at a restart).
    ``timeout_s`` bounds each model call; ``info_ttl_s`` how long model cards are reused by
    :meth:`models` (the cache key needs them on every request — a new archive version is seen
    within that time, and at once when an answer reports another version).
    """

    def __init__(
        self,
        inference_target: str,
        management_target: str,
        *,
        inference_key: str | None = None,
        management_key: str | None = None,
        key_file: Path | None = None,
        timeout_s: float = 30.0,
        retry_after_s: float = 5.0,
        info_ttl_s: float = 2.0,
    ) -> None:
        self.inference_target = inference_target
        self.management_target = management_target
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.info_ttl_s = info_ttl_s
        self._stubs: TorchServeStubs = load_stubs()
        self._inference_channel = grpc.insecure_channel(inference_target, options=CHANNEL_OPTIONS)
        self._management_channel = grpc.insecure_channel(management_target, options=CHANNEL_OPTIONS)
        self._inference = self._stubs.inference_grpc.InferenceAPIsServiceStub(self._inference_channel)
        self._management = self._stubs.management_grpc.ManagementAPIsServiceStub(self._management_channel)
        self._credentials = Credentials(inference_key, management_key, key_file)
        self._infos: list[ModelInfo] | None = None
        self._infos_at = 0.0
        self._warned_at = -UNAVAILABLE_LOG_INTERVAL_S

    @classmethod
    def from_settings(cls, settings: Any) -> TorchServeBackend:
        """A backend configured by :class:`gateway.settings.Settings`."""
        return cls(
            settings.torchserve_grpc,
            settings.torchserve_management,
            inference_key=settings.secret(settings.torchserve_inference_key),
            management_key=settings.secret(settings.torchserve_management_key),
            key_file=settings.torchserve_key_file,
            timeout_s=settings.deadline_s,
        )

    # ------------------------------------------------------------ ModelBackend

    async def detect(self, image: np.ndarray) -> Detections:
        body = await asyncio.to_thread(_image_body, image)  # tens of MB to copy or encode: off the event loop
        answer = await self._predict(DETECTION, {"data": body})
        boxes = np.asarray(answer.get("boxes", []), dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(answer.get("scores", []), dtype=np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise self._malformed(DETECTION, f"{len(boxes)} boxes but {len(scores)} scores")
        return Detections(boxes=boxes, scores=scores)

    async def classify(self, model: str, crops: np.ndarray, cam_stage: str | None = None) -> Classification:
        if model not in CLASSIFIER_MODELS:
            raise Internal(f"unknown classifier {model!r}; expected one of {CLASSIFIER_MODELS}")
        inputs = {"data": encode_npy(np.asarray(crops, dtype=np.float32))}
        if cam_stage is not None:
            inputs["cam_stage"] = cam_stage.encode("utf-8")
        answer = await self._predict(model, inputs)
        return self._classification(model, answer, rows=len(crops) if np.ndim(crops) == 3 else 1)

    async def models(self) -> list[ModelInfo]:
        if self._infos is not None and time.monotonic() - self._infos_at < self.info_ttl_s:
            return list(self._infos)
        infos = list(await asyncio.gather(*(self._describe(name) for name in MODELS)))
        self._infos, self._infos_at = infos, time.monotonic()
        return list(infos)

    async def ping(self) -> bool:
        """TorchServe's own health check (``Ping``): True when it reports itself healthy."""
        try:
            answer = await self._call(self._inference.Ping, empty_pb2.Empty(), INFERENCE, "ping")
        except DiagnosisError:
            return False
        return "healthy" in answer.health.lower()

    async def scale_workers(self, workers: Mapping[str, int], timeout_s: float = 600.0) -> None:
        """Set each model's worker count (min = max = n) and wait until the workers run.

        The archives' model-config fixes the count TorchServe starts with (``avn.store``); this is
        how a deployment sets it per environment (``python -m gateway.torchserve_backend scale``).
        """
        for name, count in workers.items():
            request = self._stubs.management.ScaleWorkerRequest(
                model_name=name, min_worker=count, max_worker=count, synchronous=True
            )
            await self._call(self._management.ScaleWorker, request, MANAGEMENT, name, timeout_s)
            logger.info("model %s scaled to %d worker(s)", name, count)
        self._infos = None

    async def close(self) -> None:
        self._inference_channel.close()
        self._management_channel.close()

    # ------------------------------------------------------------ calls

    async def _predict(self, model: str, inputs: Mapping[str, bytes]) -> dict[str, Any]:
        request = self._stubs.inference.PredictionsRequest(model_name=model, input=inputs)
        response = await self._call(self._inference.Predictions, request, INFERENCE, model)
        answer = self._parse(model, response.prediction)
        self._notice_version(model, answer.get("version"))
        note_batch_size(answer.get("batch_size"))
        return answer

    async def _describe(self, name: str) -> ModelInfo:
        request = self._stubs.management.DescribeModelRequest(model_name=name, customized=True)
        response = await self._call(self._management.DescribeModel, request, MANAGEMENT, name)
        try:
            description = json.loads(response.msg)[0]
        except (ValueError, IndexError, KeyError, TypeError) as error:
            raise self._malformed(name, f"DescribeModel answered {response.msg[:200]!r}") from error
        if not any(worker.get("status") == READY for worker in description.get("workers", [])):
            raise ModelUnavailable(f"model {name!r} is loaded but has no ready worker yet", self.retry_after_s)
        return _model_info(name, description)

    async def _call(self, method: Any, request: Any, api: str, model: str, timeout_s: float | None = None) -> Any:
        """One unary RPC on ``api`` (INFERENCE or MANAGEMENT), awaited; gRPC failures become gateway errors."""
        metadata = self._credentials.metadata(api)
        timeout_s = timeout_s or self.timeout_s
        try:
            future = method.future(request, timeout=timeout_s, metadata=metadata, wait_for_ready=False)
        except ValueError as error:  # a message over the channel's limit is refused before sending
            raise PayloadTooLarge(f"the request for model {model!r} is too large: {error}") from error
        try:
            return await _awaited(future)
        except grpc.RpcError as error:
            raise self._translated(error, model, timeout_s) from None

    def _translated(self, error: grpc.RpcError, model: str, timeout_s: float) -> DiagnosisError:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (error.details() if isinstance(error, grpc.Call) else str(error)) or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"model {model!r} did not answer within {timeout_s:g} s")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            self._warn_unavailable(details)
            return ModelUnavailable(f"the model server is unavailable (model {model!r})", self.retry_after_s)
        if code == grpc.StatusCode.NOT_FOUND or any(marker in details.lower() for marker in NOT_SERVABLE_MARKERS):
            return ModelUnavailable(f"model {model!r} is not loaded on the model server", self.retry_after_s)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
            return PayloadTooLarge(f"the request for model {model!r} is over the model server's message limit")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            logger.error("TorchServe refused the gateway's token (%s): %s", code.name, details)
            return Internal("the model server refused the gateway's credentials")
        logger.error("TorchServe call for %s failed with %s: %s", model, code.name, details)
        return Internal(f"the model server failed on model {model!r}")

    def _warn_unavailable(self, details: str) -> None:
        # Every request fails the same way while TorchServe is down: one line per interval, not per call.
        now = time.monotonic()
        if now - self._warned_at >= UNAVAILABLE_LOG_INTERVAL_S:
            self._warned_at = now
            logger.warning(
                "TorchServe (%s, %s) unavailable, answering 503: %s",
                self.inference_target,
                self.management_target,
                details,
            )

    # ------------------------------------------------------------ answers

    def _parse(self, model: str, prediction: bytes) -> dict[str, Any]:
        try:
            answer = json.loads(prediction)
        except ValueError as error:
            raise self._malformed(model, f"not JSON: {prediction[:200]!r}") from error
        if not isinstance(answer, dict):
            raise self._malformed(model, f"expected a JSON object, got {type(answer).__name__}")
        if "code" in answer and "model" not in answer:
            raise _rejection(model, answer)
        return answer

    def _classification(self, model: str, answer: Mapping[str, Any], rows: int) -> Classification:
        labels = tuple(answer.get("labels", ()))
        probabilities = np.asarray(answer.get("probabilities", []), dtype=np.float32)
        if probabilities.shape != (rows, len(labels)):
            raise self._malformed(model, f"probabilities shaped {probabilities.shape}, expected {(rows, len(labels))}")
        cams, cam_labels = None, None
        if "cams" in answer:
            cams = np.asarray(answer["cams"], dtype=np.float32)
            cam_labels = tuple(answer.get("cam_labels", ()))
            if cams.ndim != 3 or len(cams) != rows or len(cam_labels) != rows:
                raise self._malformed(model, f"cams shaped {cams.shape} with {len(cam_labels)} labels for {rows} crops")
        return Classification(labels=labels, probabilities=probabilities, cams=cams, cam_labels=cam_labels)

    def _notice_version(self, model: str, version: Any) -> None:
        """Forget the cached cards when a model answers with another version than they say."""
        known = {info.name: info.version for info in self._infos or ()}
        if version is not None and model in known and known[model] != str(version):
            logger.info("model %s now answers as version %s (was %s)", model, version, known[model])
            self._infos = None

    def _malformed(self, model: str, why: str) -> Internal:
        logger.error("unexpected answer from TorchServe model %s: %s", model, why)
        return Internal(f"the model server gave an unexpected answer for model {model!r}")


def _image_body(image: np.ndarray) -> bytes:
    """``.npy`` float32 when it fits one message, else a lossless-enough 16-bit PNG (1/65535 steps)."""
    image = np.asarray(image, dtype=np.float32)
    if image.nbytes + NPY_HEADER_BYTES <= MAX_MESSAGE_BYTES:
        return encode_npy(image)
    ok, png = cv2.imencode(".png", np.round(image.clip(0.0, 1.0) * 65535).astype(np.uint16))
    if not ok:
        raise Internal("could not encode the radiograph for the detector")
    return png.tobytes()


def _rejection(model: str, answer: Mapping[str, Any]) -> DiagnosisError:
    """A handler's 400 answer. TorchServe's gRPC API delivers it as a normal answer with status OK."""
    message = str(answer.get("message", "rejected"))
    if model == DETECTION:
        # The detector checks the radiograph itself (size limits): the client's image is at fault.
        return InvalidImage(f"the detector rejected the radiograph: {message}")
    # Crops are cut by the gateway: a rejected crop is the gateway's bug.
    logger.error("model %s rejected the gateway's request: %s", model, message)
    return Internal(f"model {model!r} rejected the gateway's request")


def _model_info(name: str, description: Mapping[str, Any]) -> ModelInfo:
    card = description.get("customizedMetadata") or {}
    if isinstance(card, str):  # older TorchServes hand the card over as a JSON string
        card = json.loads(card)
    return ModelInfo(
        name=name,
        version=str(card.get("version") or description.get("modelVersion", "")),
        input_size=int(card.get("input_size", 0)),
        labels=tuple(card.get("labels", ())),
        operating_points=operating_points_of(card.get("operating_points") or {}),
    )


class Credentials:
    """TorchServe's tokens, as gRPC metadata (``authorization: Bearer <key>``).

    Explicit keys win; otherwise they come from TorchServe's ``key_file.json`` (``{"inference":
    {"key": …}, "management": {"key": …}, "API": {"key": …}}``, written in its working
    directory at every start), re-read when its modification time changes.
    """

    def __init__(
        self, inference_key: str | None = None, management_key: str | None = None, key_file: Path | None = None
    ) -> None:
        self._explicit = {INFERENCE: inference_key, MANAGEMENT: management_key}
        self.key_file = Path(key_file) if key_file else None
        self._file_keys: dict[str, str] = {}
        self._file_stamp: int | None = None
        self._lock = threading.Lock()

    def metadata(self, api: str) -> tuple[tuple[str, str], ...]:
        key = self._explicit.get(api) or self._from_file(api)
        return (("authorization", f"Bearer {key}"),) if key else ()

    def _from_file(self, api: str) -> str | None:
        if self.key_file is None:
            return None
        try:
            stamp = self.key_file.stat().st_mtime_ns
        except OSError:
            return None  # TorchServe has not written it yet: calls go without a token and are refused
        with self._lock:
            if stamp != self._file_stamp:
                self._file_keys = _read_key_file(self.key_file)
                self._file_stamp = stamp
            return self._file_keys.get(api)


def _read_key_file(path: Path) -> dict[str, str]:
    try:
        content = json.loads(path.read_text())
        return {api: str(content[api]["key"]) for api in (INFERENCE, MANAGEMENT) if api in content}
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.error("cannot read TorchServe's key file %s: %s", path, error)
        return {}


async def _awaited(future: grpc.Future) -> Any:
    """Await a grpcio future from any event loop; cancelling the awaiting task cancels the RPC."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def transfer(done: grpc.Future) -> None:  # on the event loop
        if waiter.done():
            return
        if done.cancelled():
            waiter.cancel()
        elif done.exception() is not None:
            waiter.set_exception(done.exception())
        else:
            waiter.set_result(done.result())

    def on_done(done: grpc.Future) -> None:  # on a gRPC thread
        try:
            loop.call_soon_threadsafe(transfer, done)
        except RuntimeError:  # the loop closed meanwhile: nobody awaits the answer any more
            pass

    future.add_done_callback(on_done)
    try:
        return await waiter
    except asyncio.CancelledError:
        future.cancel()
        raise


# ---------------------------------------------------------------- scaling from the environment


def workers_from_environment(environment: Mapping[str, str]) -> dict[str, int]:
    """Worker counts per model from ``AVN_WORKERS_<MODEL>``; models without one are left alone."""
    workers = {}
    for name in MODELS:
        value = environment.get(f"{WORKERS_ENV_PREFIX}{name.upper()}", "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{WORKERS_ENV_PREFIX}{name.upper()} must be a whole number >= 1, got {value!r}")
            workers[name] = int(value)
    return workers


async def scale_when_ready(backend: TorchServeBackend, workers: Mapping[str, int], wait_s: float) -> None:
    """Wait until every model has a ready worker (TorchServe is starting), then scale."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            await backend.models()
            break
        except DiagnosisError as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"TorchServe not ready after {wait_s:g} s: {error}") from error
            await asyncio.sleep(2.0)
    await backend.scale_workers(workers)


def main(arguments: Sequence[str] | None = None) -> int:
    """``python -m gateway.torchserve_backend scale [--wait S]``: apply AVN_WORKERS_* to the
    TorchServe named by AVN_TORCHSERVE_MANAGEMENT (tokens as for the gateway)."""
    import argparse  # noqa: PLC0415
    import os  # noqa: PLC0415

    from gateway.settings import Settings  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m gateway.torchserve_backend")
    commands = parser.add_subparsers(dest="command", required=True)
    scale = commands.add_parser("scale", help="Set worker counts from AVN_WORKERS_<MODEL>.")
    scale.add_argument("--wait", type=float, default=300.0, help="Seconds to wait for TorchServe to be ready.")
    options = parser.parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workers = workers_from_environment(os.environ)
    if not workers:
        logger.info("no %s* variable set: worker counts stay as the archives say", WORKERS_ENV_PREFIX)
        return 0
    backend = TorchServeBackend.from_settings(Settings())

    async def run() -> None:
        try:
            await scale_when_ready(backend, workers, options.wait)
        finally:
            await backend.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
