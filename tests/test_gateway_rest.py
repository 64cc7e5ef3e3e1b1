"""The REST app end to end: FastAPI → pipeline → TorchServe backend → the session's real TorchServe
(tests/conftest.py), with results cached in a real redis-server. Phantom PNGs in, typed bodies out;
bad inputs answered with the mapped status and a message; health, readiness, metrics, OpenAPI."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from conftest import MODEL_VERSION, RedisServer
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gateway_support import ApiKey, phantom_png
from PIL import Image

from avn.pipeline.backend import MODELS
from avn.pipeline.pipeline import Pipeline
from avn.serving.torchserve import LOOPBACK, TorchServe, free_ports
from gateway.cache import LRUCache, RedisCache
from gateway.rest import DiagnosisResponse, create_app
from gateway.settings import Settings
from gateway.torchserve_backend import TorchServeBackend

pytestmark = pytest.mark.slow

MAX_PAYLOAD = 2_000_000  # small, so that the 413 tests stay cheap


def backend_for(server: TorchServe) -> TorchServeBackend:
    return TorchServeBackend(f"{LOOPBACK}:{server.ports.grpc_inference}", f"{LOOPBACK}:{server.ports.grpc_management}")


def settings(api_key: ApiKey, **overrides: object) -> Settings:
    return Settings(max_payload_bytes=MAX_PAYLOAD, api_keys_file=api_key.file, **overrides)


def keyed(app: FastAPI, api_key: ApiKey) -> TestClient:
    """A test client whose every request carries the API key."""
    return TestClient(app, headers=api_key.headers)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("phantoms")
    return [phantom_png(folder, index).read_bytes() for index in range(2)]


@pytest.fixture(scope="module")
def redis_for_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(torchserve_server: TorchServe, redis_for_module: RedisServer, api_key: ApiKey) -> Iterator[TestClient]:
    def make_pipeline() -> Pipeline:  # a factory: the app builds the pipeline at start-up and closes it
        cache = RedisCache(redis_for_module.url, retry_s=0.2)
        return Pipeline(backend_for(torchserve_server), cache, max_image_bytes=MAX_PAYLOAD)

    with keyed(create_app(make_pipeline, settings(api_key)), api_key) as client:
        yield client


def png_size(encoded: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(encoded))).size


def assert_error(response, status: int, code: str, words: str) -> None:  # noqa: ANN001
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"] and error["request_id"]
    assert response.headers["avn-error-type"] == code


# ---------------------------------------------------------------- diagnosis


def test_a_phantom_png_gets_a_typed_diagnosis_and_the_repeat_comes_from_the_cache(
    client: TestClient, files: list[bytes]
) -> None:
    width, height = Image.open(io.BytesIO(files[0])).size
    response = client.post(
        "/v1/diagnose", content=files[0], headers={"Content-Type": "image/png", "X-Request-Id": "req-1"}
    )
    assert response.status_code == 200, response.text
    body = DiagnosisResponse.model_validate(response.json())
    assert (body.width, body.height) == (width, height) and body.request_id == "req-1"
    assert response.headers["x-request-id"] == "req-1"
    assert 1 <= len(body.heads) <= 2 and not body.cache_hit and body.overlay_png is None
    assert [(m.name, m.version) for m in body.models] == [(name, MODEL_VERSION) for name in MODELS]
    head = body.heads[0]
    assert head.stage in [item.label for item in head.stage_probabilities] and head.cam_png
    assert head.low_confidence and head.low_confidence_reasons  # untrained weights are unsure of every head
    assert png_size(head.cam_png) == (224, 224)
    assert body.timings.detect_ms > 0 and body.timings.classify_ms > 0

    # The same pixels again, now as a multipart upload: answered from Redis.
    again = client.post("/v1/diagnose", files={"file": ("phantom.png", files[0], "image/png")})
    assert again.status_code == 200 and again.json()["cache_hit"] is True
    assert again.json()["heads"] == response.json()["heads"]


def test_the_overlay_decodes_with_the_radiographs_size(client: TestClient, files: list[bytes]) -> None:
    response = client.post("/v1/diagnose?include_overlay=true&cam_stage=IV", content=files[1])
    assert response.status_code == 200, response.text
    body = response.json()
    assert png_size(body["overlay_png"]) == (body["width"], body["height"])
    assert {head["cam_stage"] for head in body["heads"]} == {"IV"}


def test_a_study_reports_the_most_severe_stage_per_side(client: TestClient, files: list[bytes]) -> None:
    parts = [("files", (f"r{index}.png", data, "image/png")) for index, data in enumerate(files)]
    response = client.post("/v1/studies", files=parts)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["index"] for item in body["radiographs"]] == [0, 1] and body["skipped"] == []
    assert {side["side"] for side in body["sides"]} <= {"left", "right"} and body["sides"]
    for side in body["sides"]:
        assert side["radiograph_index"] in side["radiograph_indices"]


def test_models_health_and_readiness(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert [model["name"] for model in models] == list(MODELS)
    assert all(model["version"] == MODEL_VERSION and model["input_size"] > 0 for model in models)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True}


# ---------------------------------------------------------------- bad input


def test_bad_inputs_get_400_or_413_with_a_message_and_the_service_keeps_serving(
    client: TestClient, files: list[bytes]
) -> None:
    assert_error(
        client.post("/v1/diagnose", content=b"not an image at all"), 400, "InvalidImage", "not a PNG, JPEG or DICOM"
    )
    assert_error(client.post("/v1/diagnose", content=b""), 400, "InvalidImage", "empty")
    assert_error(client.post("/v1/diagnose", content=files[0][:2000]), 400, "InvalidImage", "")  # truncated PNG
    plain_text = client.post("/v1/diagnose", content=files[0], headers={"Content-Type": "text/plain"})
    assert_error(plain_text, 400, "InvalidArgument", "media type")
    assert_error(
        client.post("/v1/diagnose?note_threshold=abc", content=files[0]), 400, "InvalidArgument", "note_threshold"
    )
    assert_error(
        client.post("/v1/diagnose?note_threshold=2", content=files[0]), 400, "InvalidArgument", "note_threshold"
    )
    assert_error(client.post("/v1/diagnose?cam_stage=V", content=files[0]), 400, "InvalidArgument", "cam_stage")
    too_big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_PAYLOAD)
    assert_error(client.post("/v1/diagnose", content=too_big), 413, "PayloadTooLarge", "over the limit")
    # Chunked, without a Content-Length: refused while it streams in.
    chunked = client.post("/v1/diagnose", content=iter([too_big[:1_500_000], too_big[1_500_000:]]))
    assert_error(chunked, 413, "PayloadTooLarge", "")
    assert_error(
        client.post("/v1/diagnose", files={"file": ("big.png", too_big, "image/png")}), 413, "PayloadTooLarge", ""
    )
    assert_error(client.post("/v1/studies", content=files[0]), 400, "InvalidArgument", "multipart")
    assert client.post("/v1/diagnose", content=files[0]).status_code == 200


def test_model_server_down_is_503_with_retry_after_and_not_ready(files: list[bytes], api_key: ApiKey) -> None:
    inference, management = free_ports(2)
    backend = TorchServeBackend(f"{LOOPBACK}:{inference}", f"{LOOPBACK}:{management}", retry_after_s=9)
    with keyed(create_app(lambda: Pipeline(backend, LRUCache(4)), settings(api_key)), api_key) as client:
        response = client.post("/v1/diagnose", content=files[0])
        assert_error(response, 503, "ModelUnavailable", "unavailable")
        assert response.headers["retry-after"] == "9"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"ready": False} and "retry-after" in ready.headers
        assert client.get("/healthz").status_code == 200  # alive, though not ready


def test_a_bug_is_500_internal_without_its_details(
    files: list[bytes], caplog: pytest.LogCaptureFixture, api_key: ApiKey
) -> None:
    inference, management = free_ports(2)
    pipeline = Pipeline(TorchServeBackend(f"{LOOPBACK}:{inference}", f"{LOOPBACK}:{management}"), None)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    pipeline.diagnose = broken  # type: ignore[method-assign]
    with keyed(create_app(pipeline, settings(api_key)), api_key) as client:
        response = client.post("/v1/diagnose", content=files[0])
        assert_error(response, 500, "Internal", "internal error")
        assert "secret" not in response.text
        metrics = client.get("/metrics").text
        assert 'avn_request_errors_total{error="Internal",operation="diagnose",protocol="rest"} 1.0' in metrics
    assert any("secret internals" in record.getMessage() or record.exc_info for record in caplog.records)


def test_a_missed_deadline_is_504(torchserve_server: TorchServe, files: list[bytes], api_key: ApiKey) -> None:
    app = create_app(lambda: Pipeline(backend_for(torchserve_server), None), settings(api_key, deadline_s=0.001))
    with keyed(app, api_key) as client:
        assert_error(client.post("/v1/diagnose", content=files[0]), 504, "DeadlineExceeded", "deadline")


# ---------------------------------------------------------------- metrics and docs


def test_metrics_count_requests_errors_steps_and_cache_hits(client: TestClient, files: list[bytes]) -> None:
    client.post("/v1/diagnose", content=files[0])
    client.post("/v1/diagnose", content=b"garbage")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'avn_requests_total{operation="diagnose",outcome="ok",protocol="rest"}' in text
    assert 'avn_request_errors_total{error="InvalidImage",operation="diagnose",protocol="rest"}' in text
    assert 'avn_step_duration_seconds_count{step="classify"}' in text
    assert 'avn_request_duration_seconds_bucket{le="0.5",operation="diagnose",protocol="rest"}' in text
    hits = [line for line in text.splitlines() if line.startswith('avn_cache_lookups_total{result="hit"}')]
    assert hits and float(hits[0].split()[-1]) >= 1
    assert 'avn_diagnoses_total{cache="hit"}' in text


def test_openapi_documents_the_bodies_and_typed_results(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    diagnose = spec["paths"]["/v1/diagnose"]["post"]
    assert {"image/png", "application/dicom", "multipart/form-data"} <= set(diagnose["requestBody"]["content"])
    assert diagnose["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/DiagnosisResponse")
    assert "503" in diagnose["responses"] and "413" in diagnose["responses"]
    assert {"FemoralHeadResult", "StudyResponse", "ErrorResponse"} <= set(spec["components"]["schemas"])


# ---------------------------------------------------------------- last: it restarts the module's Redis


def test_redis_killed_mid_run_still_serves_uncached(
    client: TestClient, redis_for_module: RedisServer, files: list[bytes]
) -> None:
    client.post("/v1/diagnose", content=files[0])  # cached (by the first test already, when run in order)
    assert client.post("/v1/diagnose", content=files[0]).json()["cache_hit"] is True
    redis_for_module.stop()
    try:
        response = client.post("/v1/diagnose", content=files[0])
        assert response.status_code == 200 and response.json()["cache_hit"] is False
        errors = [
            line for line in client.get("/metrics").text.splitlines() if line.startswith("avn_cache_errors_total")
        ]
        assert float(errors[0].split()[-1]) >= 1
    finally:
        redis_for_module.start()  # same port, empty; the cache reconnects within its retry interval
