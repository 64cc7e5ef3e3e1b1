"""The five archives served by a real TorchServe on loopback: readiness, batched requests, shapes
and labels, staging CAMs, detection coordinates, and bad bodies answered with a clear error.

One server for the whole session (``torchserve_server`` in tests/conftest.py, shared with the
gateway tests); it runs on free loopback ports with token authorisation disabled — allowed on
loopback only — and is stopped at the end.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MODEL_VERSION, TEST_SERVING

from avn.models import CLASSIFIER_TASKS, TASKS
from avn.serving.codec import WireFormatError, decode_crops_request, decode_image_request, encode_crops_json, encode_npy
from avn.serving.torchserve import InsecureConfigError, Ports, TorchServe, worker_thread_environment, write_config
from avn.store import DEFAULT_SERVING
from avn.vocabulary import NOTES, STAGES

pytestmark = pytest.mark.slow

CROP = 224
VERSION = MODEL_VERSION
BATCHING_SERVING = TEST_SERVING


@pytest.fixture(scope="session")
def server(torchserve_server: TorchServe) -> TorchServe:
    """The session's TorchServe over random-init archives (tests/conftest.py), shared with the gateway tests."""
    return torchserve_server


def post(
    server: TorchServe, model: str, body: bytes, content_type: str = "application/octet-stream"
) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{server.inference_url}/predictions/{model}", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def crops(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, CROP, CROP), dtype=np.float32)


# ---------------------------------------------------------------- the wire format, no server


def test_crops_decode_from_npy_and_json_with_clear_errors() -> None:
    batch = crops(2)
    assert decode_crops_request(encode_npy(batch), CROP).crops.shape == (2, CROP, CROP)
    assert decode_crops_request(encode_npy(batch[0]), CROP).crops.shape == (1, CROP, CROP)
    decoded = decode_crops_request(json.loads(encode_crops_json(batch, cam_stage="IV")), CROP)
    assert decoded.cam_stage == "IV" and np.array_equal(decoded.crops, batch)
    with pytest.raises(WireFormatError, match="must be shaped"):
        decode_crops_request(encode_npy(batch[:, :100]), CROP)
    with pytest.raises(WireFormatError, match=r"in \[0, 1\]"):
        decode_crops_request(encode_npy(batch * 255), CROP)
    with pytest.raises(WireFormatError, match="cam_stage"):
        decode_crops_request({"crops": json.loads(encode_crops_json(batch))["crops"], "cam_stage": "V"}, CROP)
    with pytest.raises(WireFormatError, match="npy"):
        decode_crops_request(b"\x00garbage", CROP)


def test_images_decode_from_npy_and_16_bit_png() -> None:
    image = np.random.default_rng(0).random((300, 400), dtype=np.float32)
    assert decode_image_request(encode_npy(image)).shape == (300, 400)
    ok, png = cv2.imencode(".png", (image * 65535).astype(np.uint16))
    np.testing.assert_allclose(decode_image_request(png.tobytes()), image, atol=1e-4)
    with pytest.raises(WireFormatError, match="neither"):
        decode_image_request(b"GIF89a....")


def properties_of(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_the_config_pins_models_to_the_store_and_keeps_the_rest_apis_on_loopback(tmp_path: Path) -> None:
    """Issue #11: what an unpinned TorchServe would leave to its defaults is written down."""
    store = tmp_path / "model_store"
    written = properties_of(write_config(tmp_path / "c.properties", store, Ports(1, 2, 3, 4, 5, 6), host="0.0.0.0"))
    assert written["disable_token_authorization"] == "false"  # token authorisation on by default
    assert written["enable_model_api"] == "false" and written["enable_envvars_config"] == "false"
    for api in ("inference_address", "management_address", "metrics_address"):
        assert written[api].startswith("http://127.0.0.1:"), api
    assert written["grpc_inference_address"] == written["grpc_management_address"] == "0.0.0.0"
    allowed = re.compile(written["allowed_urls"])
    assert allowed.fullmatch(f"file://{store}/detection.mar")
    for elsewhere in (
        "https://example.org/detection.mar",
        f"file://{tmp_path}/other/x.mar",
        f"file://{store}/../x.mar",
    ):
        assert not allowed.fullmatch(elsewhere), elsewhere


def test_the_running_torchserve_refuses_to_register_a_model(server: TorchServe) -> None:
    request = urllib.request.Request(
        f"{server.management_url}/models?url=https://example.org/evil.mar&model_name=evil", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    message = refused.value.read().decode()
    assert refused.value.code in (400, 403, 405), (refused.value.code, message)
    assert "disabled" in message.lower() or "not allowed" in message.lower(), message
    assert server.describe("evil") is None and server.describe("view") is not None


def test_token_auth_stays_on_away_from_loopback_unless_a_network_policy_guards_it(tmp_path: Path) -> None:
    ports = Ports(1, 2, 3, 4, 5, 6)
    with pytest.raises(InsecureConfigError):
        write_config(tmp_path / "c.properties", tmp_path, ports, host="0.0.0.0", disable_token_auth=True)
    guarded = write_config(
        tmp_path / "g.properties", tmp_path, ports, host="0.0.0.0", disable_token_auth=True, network_guarded=True
    )
    assert "disable_token_authorization=true" in guarded.read_text().splitlines()


# ---------------------------------------------------------------- a real TorchServe


def test_all_five_models_are_ready_with_their_batching_and_card(server: TorchServe) -> None:
    for task in TASKS:
        description = server.describe(task, customized=True)
        expected = BATCHING_SERVING.get(task, DEFAULT_SERVING[task])
        assert description["modelVersion"] == VERSION
        assert (description["batchSize"], description["maxBatchDelay"]) == (
            expected.batch_size,
            expected.max_batch_delay_ms,
        )
        card = description["customizedMetadata"]
        assert card["task"] == task and card["training_data_hash"] == "test"
        if task in CLASSIFIER_TASKS:
            assert tuple(card["labels"]) == CLASSIFIER_TASKS[task]


@pytest.mark.parametrize("task", list(CLASSIFIER_TASKS))
def test_two_crops_give_two_rows_of_named_probabilities(server: TorchServe, task: str) -> None:
    status, answer = post(server, task, encode_npy(crops(2)))
    labels = CLASSIFIER_TASKS[task]
    assert status == 200 and answer["model"] == task and answer["version"] == VERSION
    assert tuple(answer["labels"]) == labels
    probabilities = np.array(answer["probabilities"])
    assert probabilities.shape == (2, len(labels))
    if task == "notes":
        assert all(set(prediction) <= set(NOTES) for prediction in answer["predictions"])
    else:
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
        assert answer["predictions"] == [labels[i] for i in probabilities.argmax(axis=1)]


def test_the_int8_notes_archive_answers_with_the_weights_its_card_describes(server: TorchServe) -> None:
    import asyncio

    from avn.serving.inprocess import InProcessBackend

    card = server.describe("notes", customized=True)["customizedMetadata"]
    assert card["optimisation"]["form"] == "int8" and "int8" in card["optimisation"]["forms"]
    batch = crops(3, seed=7)
    status, answer = post(server, "notes", encode_npy(batch))
    assert status == 200
    in_process = asyncio.run(InProcessBackend.from_store(server.model_store).classify("notes", batch))
    np.testing.assert_allclose(answer["probabilities"], in_process.probabilities, rtol=0, atol=1e-4)


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_rows(server: TorchServe) -> None:
    sizes = [1, 2, 1, 3]
    with ThreadPoolExecutor(len(sizes)) as pool:
        answers = list(pool.map(lambda n: post(server, "view", encode_npy(crops(n, seed=n))), sizes))
    for size, (status, answer) in zip(sizes, answers, strict=True):
        assert status == 200 and np.array(answer["probabilities"]).shape == (size, 2)
    assert max(_batched_request_counts(server, "view")) > 1
    # Each answer says how many requests its forward pass ran (the gateway traces it).
    assert max(answer["batch_size"] for _, answer in answers) > 1


def _batched_request_counts(server: TorchServe, task: str) -> list[int]:
    """Requests per forward pass, from the handler's log lines (the log is written asynchronously)."""
    counts: list[int] = []
    for _ in range(20):
        log = (server.log_dir / "model_log.log").read_text(errors="replace")
        marker = f"{task}: one forward pass over "
        counts = [int(line.split(marker)[1].split()[0]) for line in log.splitlines() if marker in line]
        if counts and max(counts) > 1:
            break
        time.sleep(0.25)
    return counts or [0]


def test_staging_returns_a_cam_per_crop_for_the_predicted_or_requested_stage(server: TorchServe) -> None:
    status, answer = post(server, "staging", encode_npy(crops(2)))
    assert status == 200
    cams = np.array(answer["cams"])
    assert cams.shape == (2, CROP // 32, CROP // 32) and cams.min() >= 0 and cams.max() <= 1
    assert answer["cam_labels"] == answer["predictions"]
    status, answer = post(server, "staging", encode_crops_json(crops(2), cam_stage="IV"), "application/json")
    assert status == 200 and answer["cam_labels"] == ["IV", "IV"] and np.array(answer["cams"]).shape == (2, 7, 7)
    assert set(answer["predictions"]) <= set(STAGES)


def test_detection_answers_in_the_pixel_coordinates_of_the_image_sent(server: TorchServe) -> None:
    rng = np.random.default_rng(3)
    radiograph = rng.random((2000, 2400), dtype=np.float32)
    landscape = (rng.random((2100, 2600)) * 65535).astype(np.uint16)
    ok, png = cv2.imencode(".png", landscape)
    for body, (height, width) in ((encode_npy(radiograph), radiograph.shape), (png.tobytes(), landscape.shape)):
        status, answer = post(server, "detection", body)
        assert status == 200 and answer["image_size"] == [height, width]
        boxes = np.array(answer["boxes"]).reshape(-1, 4)
        assert len(boxes) == len(answer["scores"]) >= 1
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()
        # Far beyond the 320 px detector input: the boxes were mapped back to the original image.
        assert boxes.max() > 1000


def test_a_bad_body_gets_a_clear_error_and_the_server_keeps_answering(server: TorchServe) -> None:
    status, answer = post(server, "staging", b"this is not an array")
    assert status == 400 and answer["type"] == "WireFormatError" and ".npy" in answer["message"]
    status, answer = post(server, "detection", b"\x89PNG\r\n\x1a\nbroken")
    assert status == 400 and "PNG" in answer["message"]
    # A bad request in the same batch as good ones fails alone.
    bodies = [encode_npy(crops(1)), b"garbage", encode_npy(crops(2))]
    with ThreadPoolExecutor(len(bodies)) as pool:
        statuses = [status for status, _ in pool.map(lambda body: post(server, "view", body), bodies)]
    assert statuses == [200, 400, 200]
    assert post(server, "staging", encode_npy(crops(1)))[0] == 200


def test_workers_share_the_cores_unless_the_environment_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert worker_thread_environment() == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert worker_thread_environment()["OMP_NUM_THREADS"] == "3"
    assert worker_thread_environment(torch_threads=8)["OMP_NUM_THREADS"] == "8"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert worker_thread_environment() == {}  # the operator's choice is inherited untouched
