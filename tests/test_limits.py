"""Limits and back-pressure (issue #11): one in-flight limit for REST and gRPC together (429 /
RESOURCE_EXHAUSTED with Retry-After, health checks still answering), gRPC's transport cap behind
it, a deadline on reading the body (408 for a slow upload, its slot given back) and on rendering
(504), and bounded thread pools kept apart for image work and model calls.

Requests are held in flight by a backend whose detector waits for the test's go-ahead (the models
themselves are the tiny untrained ones); the servers are real (uvicorn, grpc.aio on loopback).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from gateway_support import ApiKey, keyed_channel, phantom_dicom, phantom_png, write_tiny_store
from grpc_health.v1 import health_pb2, health_pb2_grpc
from web_support import LiveGateway, live_gateway

import avn.pipeline.pipeline as pipeline_module
import avn.serving.inprocess as inprocess_module
from avn.pipeline.pipeline import PROBE_IMAGE_SIDE, Pipeline
from avn.pipeline.results import DiagnoseRequest, ImagePayload
from avn.serving.inprocess import InProcessBackend
from avn.serving.torchserve import LOOPBACK
from gateway.admission import Admission
from gateway.grpc_server import TRANSPORT_MARGIN_RPCS, BackgroundGrpcServer, pb
from gateway.proto import load
from gateway.rest import create_app
from gateway.settings import Settings

STUBS = load()
RPC_TIMEOUT_S = 60
WAIT_S = 30


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("limits")
    return {"store": write_tiny_store(root), "png": phantom_png(root, 0), "dicom": phantom_dicom(root, 1)}


class GatedBackend:
    """The in-process backend, but detection of a radiograph (not the readiness probe's tiny image)
    waits until :attr:`gate` opens: the test decides how long a request stays in flight."""

    def __init__(self, inner: InProcessBackend, gate: threading.Event) -> None:
        self.inner = inner
        self.gate = gate
        self.waiting = 0
        self._lock = threading.Lock()

    async def models(self):  # noqa: ANN201
        return await self.inner.models()

    async def detect(self, image: np.ndarray):  # noqa: ANN201
        if image.shape[0] > PROBE_IMAGE_SIDE:
            with self._lock:
                self.waiting += 1
            try:
                await asyncio.to_thread(self.gate.wait, WAIT_S)
            finally:
                with self._lock:
                    self.waiting -= 1
        return await self.inner.detect(image)

    async def classify(self, model: str, crops: np.ndarray, cam_stage: str | None = None):  # noqa: ANN201
        return await self.inner.classify(model, crops, cam_stage)

    async def close(self) -> None:
        await self.inner.close()


def wait_until(condition, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# ---------------------------------------------------------------- the in-flight limit


@pytest.fixture
def gated(files: dict, api_key: ApiKey) -> Iterator[dict]:
    """REST and gRPC sharing one admission of 2, over gated backends sharing one gate."""
    gate = threading.Event()
    admission = Admission(max_in_flight=2)
    rest_backend = GatedBackend(InProcessBackend.from_store(files["store"]), gate)
    grpc_backend = GatedBackend(InProcessBackend.from_store(files["store"]), gate)
    settings = Settings(api_keys_file=api_key.file, case_bank=None)
    app = create_app(Pipeline(rest_backend), settings, admission=admission)  # no cache: every request works
    try:
        with (
            live_gateway(app) as rest,
            BackgroundGrpcServer(
                Pipeline(grpc_backend), authenticator=api_key.authenticator(), admission=admission
            ) as grpc_server,
            keyed_channel(grpc_server.target, api_key.key) as channel,
        ):
            yield {
                "rest": rest,
                "stub": STUBS.services.DiagnosisStub(channel),
                "health": health_pb2_grpc.HealthStub(channel),
                "admission": admission,
                "backends": (rest_backend, grpc_backend),
                "gate": gate,
            }
    finally:
        gate.set()


def test_the_in_flight_limit_holds_for_both_protocols_together_and_says_when_to_retry(
    gated: dict, files: dict, api_key: ApiKey
) -> None:
    rest: LiveGateway = gated["rest"]
    png = files["png"].read_bytes()
    headers = {**api_key.headers, "content-type": "image/png"}
    held_rest: dict = {}
    rest_thread = threading.Thread(
        target=lambda: held_rest.update(answer=post(f"{rest.url}/v1/diagnose", png, headers))
    )
    rest_thread.start()
    held_grpc = gated["stub"].Diagnose.future(pb.DiagnoseRequest(image=png), timeout=RPC_TIMEOUT_S)
    wait_until(lambda: sum(backend.waiting for backend in gated["backends"]) == 2, "two requests in flight")
    assert gated["admission"].in_flight == 2

    # Full: a third request, on either protocol, is refused at once with a time to retry.
    status, response_headers, body = post(f"{rest.url}/v1/diagnose", png, headers)
    assert status == 429 and response_headers["retry-after"] == "1"
    assert response_headers["avn-error-type"] == "Overloaded" and json.loads(body)["error"]["code"] == "Overloaded"
    with pytest.raises(grpc.RpcError) as raised:
        gated["stub"].Diagnose(pb.DiagnoseRequest(image=png), timeout=RPC_TIMEOUT_S)
    trailing = dict(raised.value.trailing_metadata())
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailing["retry-after"] == "1" and trailing["avn-error-type"] == "Overloaded"
    # The health checks are no request: they answer while the gateway is full.
    assert get_status(f"{rest.url}/healthz") == 200 and get_status(f"{rest.url}/readyz") == 200
    assert gated["health"].Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
        health_pb2.HealthCheckResponse.SERVING
    )

    gated["gate"].set()
    rest_thread.join(RPC_TIMEOUT_S)
    assert held_rest["answer"][0] == 200 and held_grpc.result().heads
    assert gated["admission"].in_flight == 0
    assert post(f"{rest.url}/v1/diagnose", png, headers)[0] == 200  # the slots came back


def test_grpc_transport_caps_concurrent_calls_beyond_the_limit(files: dict, api_key: ApiKey) -> None:
    """Behind the admission, the transport refuses calls past the limit plus a margin; long-lived
    health watches fill it here, as a flood of any calls would."""
    admission = Admission(max_in_flight=1)
    pipeline = Pipeline(InProcessBackend.from_store(files["store"]))
    with (
        BackgroundGrpcServer(pipeline, authenticator=api_key.authenticator(), admission=admission) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(1 + TRANSPORT_MARGIN_RPCS)]
        try:
            for watch in watches:
                next(watch)  # each is open, holding one of the transport's slots
            with pytest.raises(grpc.RpcError) as raised:
                health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            for watch in watches:
                watch.cancel()


# ---------------------------------------------------------------- deadlines


@pytest.fixture(scope="module")
def slow_body_gateway(files: dict, api_key: ApiKey) -> Iterator[LiveGateway]:
    settings = Settings(api_keys_file=api_key.file, case_bank=None, body_timeout_s=1.0)
    app = create_app(Pipeline(InProcessBackend.from_store(files["store"])), settings)
    with live_gateway(app) as server:
        server.app = app
        yield server


def raw_request(gateway: LiveGateway, head: str, parts: list[bytes], pause_s: float) -> str:
    """Send ``head`` then ``parts`` with ``pause_s`` between them (stopping when the server answers);
    the status line of the answer."""
    with socket.create_connection((LOOPBACK, gateway.port), timeout=15) as connection:
        connection.sendall(head.encode())
        connection.settimeout(pause_s)
        for part in parts:
            try:
                answer = connection.recv(4096)
                if answer:
                    return answer.split(b"\r\n", 1)[0].decode()
            except TimeoutError:
                pass
            try:
                connection.sendall(part)
            except OSError:
                break
        connection.settimeout(15)
        return connection.recv(4096).split(b"\r\n", 1)[0].decode()


def test_a_slow_upload_times_out_with_408_and_gives_its_slot_back(slow_body_gateway: LiveGateway, api_key) -> None:
    key = api_key.headers["authorization"]
    stalled = (
        f"POST /v1/diagnose HTTP/1.1\r\nHost: gateway\r\nauthorization: {key}\r\n"
        "content-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\n"
    )
    assert raw_request(slow_body_gateway, stalled, [b"x" * 100], pause_s=5) == "HTTP/1.1 408 Request Timeout"
    # A trickle (a chunk every 0.3 s) is refused too: the deadline is on the whole body, not between bytes.
    trickle = (
        f"POST /v1/diagnose HTTP/1.1\r\nHost: gateway\r\nauthorization: {key}\r\n"
        "content-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    chunks = [b"10\r\n" + b"y" * 16 + b"\r\n"] * 20
    assert raw_request(slow_body_gateway, trickle, chunks, pause_s=0.3) == "HTTP/1.1 408 Request Timeout"
    wait_until(lambda: slow_body_gateway.app.state.admission.in_flight == 0, "the slots to come back")


def test_a_render_past_its_deadline_is_504(files: dict, api_key: ApiKey) -> None:
    settings = Settings(api_keys_file=api_key.file, case_bank=None, deadline_s=0.001)
    with live_gateway(create_app(Pipeline(InProcessBackend({})), settings)) as server:
        headers = {**api_key.headers, "content-type": "application/dicom"}
        status, response_headers, _ = post(f"{server.url}/v1/render", files["dicom"].read_bytes(), headers)
    assert status == 504 and response_headers["avn-error-type"] == "DeadlineExceeded"


# ---------------------------------------------------------------- thread pools


class Watched:
    """Wraps a function run on worker threads: which threads ran it, and how many at once at most."""

    def __init__(self, function, hold_s: float = 0.15) -> None:  # noqa: ANN001
        self.function, self.hold_s = function, hold_s
        self.threads: set[str] = set()
        self.running = self.most = 0
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        with self._lock:
            self.threads.add(threading.current_thread().name)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.hold_s)  # long enough for the others to pile up, were they allowed to
            return self.function(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


def test_image_work_and_model_calls_run_on_bounded_pools_of_their_own(
    files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode = Watched(pipeline_module.decode_payload)
    classify = Watched(inprocess_module._classify)
    monkeypatch.setattr(pipeline_module, "decode_payload", decode)
    monkeypatch.setattr(inprocess_module, "_classify", classify)
    backend = InProcessBackend.from_store(files["store"], threads=2)
    pipeline = Pipeline(backend, image_threads=1)
    payload = ImagePayload(files["png"].read_bytes())

    async def four_at_once() -> None:
        await asyncio.gather(*(pipeline.diagnose(DiagnoseRequest(payload)) for _ in range(4)))
        await pipeline.close()

    asyncio.run(four_at_once())
    assert decode.most == 1 and {name.rsplit("_", 1)[0] for name in decode.threads} == {"avn-image"}
    assert classify.most == 2 and {name.rsplit("_", 1)[0] for name in classify.threads} == {"avn-model"}


def test_the_pools_are_sized_by_the_settings(files: dict, tmp_path: Path) -> None:
    from gateway.service import build_pipeline  # noqa: PLC0415

    settings = Settings(backend="embedded", model_store=files["store"], image_threads=3, model_threads=5)
    pipeline = build_pipeline(settings)
    assert (pipeline.image_pool._max_workers, pipeline.backend.pool._max_workers) == (3, 5)
    asyncio.run(pipeline.close())
