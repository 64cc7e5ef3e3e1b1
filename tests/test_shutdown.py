"""Graceful shutdown (issue #11): on SIGTERM ``python -m gateway.service`` goes not ready on both
protocols at once (``/readyz`` 503, gRPC health NOT_SERVING), refuses new work with 503 /
UNAVAILABLE and Retry-After, lets the request in flight finish, and exits 0; a request that does
not finish within ``AVN_DRAIN_S`` does not hold the exit up.

The request in flight is an upload the test sends in two halves: it is admitted when its headers
arrive and stays in flight until the test sends the rest — a real request, held as long as the
test needs, with no test hook in the gateway.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from gateway_support import ApiKey, keyed_channel, phantom_png, write_tiny_store
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_support import GatewayProcess

from avn.serving.torchserve import LOOPBACK
from gateway.grpc_server import pb
from gateway.proto import load

STUBS = load()
WAIT_S = 30


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("shutdown")
    return {"store": write_tiny_store(root), "png": phantom_png(root, 0).read_bytes()}


def http(url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def in_flight(gateway: GatewayProcess, api_key: ApiKey) -> float:
    """The gateway's own count of REST diagnoses being answered (its /metrics)."""
    _, _, text = http(f"{gateway.rest_url}/metrics", api_key.headers)
    found = re.search(rb'avn_requests_in_flight\{operation="diagnose",protocol="rest"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def wait_until(condition, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_upload(gateway: GatewayProcess, api_key: ApiKey, body: bytes) -> socket.socket:
    """A diagnosis whose headers and first half are sent; the caller sends the rest."""
    connection = socket.create_connection((LOOPBACK, gateway.rest_port), timeout=60)
    head = (
        f"POST /v1/diagnose HTTP/1.1\r\nHost: gateway\r\nauthorization: {api_key.headers['authorization']}\r\n"
        f"content-type: image/png\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    connection.sendall(head.encode() + body[: len(body) // 2])
    return connection


def answer_of(connection: socket.socket) -> tuple[str, bytes]:
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


def health_status(gateway: GatewayProcess) -> int:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def test_sigterm_goes_not_ready_on_both_protocols_drains_the_request_in_flight_and_exits_0(
    files: dict, api_key: ApiKey, tmp_path: Path
) -> None:
    gateway = GatewayProcess(files["store"], tmp_path, AVN_API_KEYS_FILE=str(api_key.file), AVN_DRAIN_S="30")
    with gateway.start():
        assert health_status(gateway) == health_pb2.HealthCheckResponse.SERVING
        upload = start_upload(gateway, api_key, files["png"])
        wait_until(lambda: in_flight(gateway, api_key) == 1, "the upload to be in flight")

        gateway.terminate()
        wait_until(lambda: http(f"{gateway.rest_url}/readyz")[0] == 503, "/readyz to say 503")
        assert health_status(gateway) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert http(f"{gateway.rest_url}/healthz")[0] == 200  # alive, not ready
        # New work is refused, with a time to retry (elsewhere), on both protocols.
        status, headers, body = http(f"{gateway.rest_url}/v1/diagnose", api_key.headers, files["png"])
        assert status == 503 and headers["retry-after"] == "1" and json.loads(body)["error"]["code"] == "ShuttingDown"
        with keyed_channel(gateway.grpc_target, api_key.key) as channel, pytest.raises(grpc.RpcError) as raised:
            STUBS.services.DiagnosisStub(channel).Diagnose(pb.DiagnoseRequest(image=files["png"]), timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(raised.value.trailing_metadata())["avn-error-type"] == "ShuttingDown"
        assert gateway.process.poll() is None  # still there: the upload is in flight

        upload.sendall(files["png"][len(files["png"]) // 2 :])
        status_line, body = answer_of(upload)
        upload.close()
        assert status_line == "HTTP/1.1 200 OK" and json.loads(body)["heads"]
        assert gateway.wait(timeout_s=60) == 0, gateway.output()
    assert "draining 1 in flight" in gateway.output()
    assert "still in flight" not in gateway.output()


def test_a_request_that_outlasts_the_drain_does_not_hold_the_exit(files: dict, api_key: ApiKey, tmp_path: Path) -> None:
    gateway = GatewayProcess(files["store"], tmp_path, AVN_API_KEYS_FILE=str(api_key.file), AVN_DRAIN_S="1")
    with gateway.start():
        upload = start_upload(gateway, api_key, files["png"])  # never finished
        wait_until(lambda: in_flight(gateway, api_key) == 1, "the upload to be in flight")
        stopping = time.monotonic()
        gateway.terminate()
        assert gateway.wait(timeout_s=30) == 0, gateway.output()
        stopped_after_s = time.monotonic() - stopping
        upload.close()
    assert "stopping with 1 requests still in flight" in gateway.output()
    assert stopped_after_s < 20  # the drain (1 s) and uvicorn's own bound (1 s), far from the body's 60 s deadline
