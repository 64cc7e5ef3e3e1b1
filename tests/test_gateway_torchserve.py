"""The TorchServe backend against a real TorchServe (tests/conftest.py: random-init archives on
loopback) over TorchServe's gRPC inference and management APIs: model cards, detection and the
four classifiers with their shapes and labels, and failures mapped to gateway errors."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MODEL_VERSION

from avn.models import CLASSIFIER_TASKS
from avn.pipeline.backend import CLASSIFIER_MODELS, MODELS
from avn.serving.torchserve import LOOPBACK, TorchServe, free_ports
from avn.vocabulary import STAGES
from gateway.errors import DeadlineExceeded, Internal, InvalidImage, ModelUnavailable
from gateway.settings import Settings
from gateway.stubgen import STAMP_NAME
from gateway.torchserve_backend import INFERENCE, MANAGEMENT, Credentials, TorchServeBackend, workers_from_environment
from gateway.torchserve_stubs import STUBS_DIR

pytestmark = pytest.mark.slow

CROP = 224


def backend_for(server: TorchServe, **options: float) -> TorchServeBackend:
    return TorchServeBackend(
        f"{LOOPBACK}:{server.ports.grpc_inference}", f"{LOOPBACK}:{server.ports.grpc_management}", **options
    )


@pytest.fixture(scope="module")
def backend(torchserve_server: TorchServe) -> TorchServeBackend:
    backend = backend_for(torchserve_server)
    yield backend
    asyncio.run(backend.close())


def crops(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, CROP, CROP), dtype=np.float32)


def test_stubs_are_generated_from_the_installed_jar_into_an_ignored_folder(backend: TorchServeBackend) -> None:
    assert (STUBS_DIR / STAMP_NAME).is_file() and (STUBS_DIR / "inference_pb2_grpc.py").is_file()
    ignored = Path(__file__).resolve().parent.parent / ".gitignore"
    assert "/gateway/_generated_ts/" in ignored.read_text().splitlines()


def test_models_report_versions_input_sizes_and_labels(backend: TorchServeBackend) -> None:
    infos = {info.name: info for info in asyncio.run(backend.models())}
    assert tuple(infos) == MODELS
    assert all(info.version == MODEL_VERSION for info in infos.values())
    assert infos["detection"].input_size == 320
    for name in CLASSIFIER_MODELS:
        assert infos[name].input_size == CROP and infos[name].labels == CLASSIFIER_TASKS[name]


def test_four_classifiers_concurrently_give_rows_in_crop_order_and_staging_cams(backend: TorchServeBackend) -> None:
    batch = crops(2)

    async def all_four():
        calls = [
            backend.classify(name, batch, cam_stage="IV" if name == "staging" else None) for name in CLASSIFIER_MODELS
        ]
        return dict(zip(CLASSIFIER_MODELS, await asyncio.gather(*calls), strict=True))

    answers = asyncio.run(all_four())
    for name, answer in answers.items():
        assert answer.labels == CLASSIFIER_TASKS[name]
        assert answer.probabilities.shape == (2, len(answer.labels)) and answer.probabilities.dtype == np.float32
        if name != "notes":
            np.testing.assert_allclose(answer.probabilities.sum(axis=1), 1.0, atol=1e-4)
    staging = answers["staging"]
    assert staging.cams.shape == (2, CROP // 32, CROP // 32) and staging.cam_labels == ("IV", "IV")
    assert answers["view"].cams is None
    # Rows follow the crops: the same crop alone gives its row of the pair.
    single = asyncio.run(backend.classify("staging", batch[1:]))  # another event loop, same channel
    np.testing.assert_allclose(single.probabilities[0], staging.probabilities[1], atol=1e-4)
    assert single.cam_labels[0] in STAGES


def test_detection_boxes_are_in_the_pixels_of_the_radiograph(backend: TorchServeBackend) -> None:
    radiograph = np.random.default_rng(3).random((900, 1100), dtype=np.float32)
    detections = asyncio.run(backend.detect(radiograph))
    assert detections.boxes.shape == (len(detections.scores), 4) and len(detections.scores) >= 1
    assert (detections.boxes >= 0).all()
    assert (detections.boxes[:, [0, 2]] <= 1100).all() and (detections.boxes[:, [1, 3]] <= 900).all()


def test_rejections_and_deadlines_become_typed_errors(
    torchserve_server: TorchServe, backend: TorchServeBackend
) -> None:
    with pytest.raises(InvalidImage, match="radiograph size"):
        asyncio.run(backend.detect(np.zeros((8, 8), dtype=np.float32)))
    with pytest.raises(Internal):  # crops are the gateway's own: a rejected crop is our bug
        asyncio.run(backend.classify("view", crops(1)[:, :100, :100]))
    impatient = backend_for(torchserve_server, timeout_s=0.001)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(impatient.detect(np.random.default_rng(0).random((1500, 1500), dtype=np.float32)))
    asyncio.run(impatient.close())
    assert asyncio.run(backend.ping())  # and the server keeps answering


def test_a_stopped_torchserve_is_model_unavailable_with_a_retry_hint_and_workers_scale(
    torchserve_server: TorchServe, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(torchserve_server.model_store / "side.mar", store)  # one model starts in seconds
    server = TorchServe(store, tmp_path / "ts", disable_token_auth=True, gpus=0, system_metrics=False).start()
    try:
        server.wait_until_ready(["side"], timeout_s=90)
        backend = backend_for(server, retry_after_s=7)
        assert asyncio.run(backend.classify("side", crops(1))).probabilities.shape == (1, 2)
        asyncio.run(backend.scale_workers(workers_from_environment({"AVN_WORKERS_SIDE": "2"})))
        assert len([w for w in server.describe("side")["workers"] if w["status"] == "READY"]) == 2
        with pytest.raises(ModelUnavailable, match="not loaded"):  # the four others are missing
            asyncio.run(backend.models())
    finally:
        server.stop()
    with pytest.raises(ModelUnavailable) as stopped:
        asyncio.run(backend.classify("side", crops(1)))
    assert stopped.value.retry_after_s == 7
    assert not asyncio.run(backend.ping())
    asyncio.run(backend.close())


def test_nothing_listening_is_model_unavailable_and_settings_configure_the_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inference, management = free_ports(2)
    monkeypatch.setenv("AVN_TORCHSERVE_GRPC", f"{LOOPBACK}:{inference}")
    monkeypatch.setenv("AVN_TORCHSERVE_MANAGEMENT", f"{LOOPBACK}:{management}")
    monkeypatch.setenv("AVN_DEADLINE_S", "3")
    backend = TorchServeBackend.from_settings(Settings())
    assert backend.timeout_s == 3
    for call in (backend.detect(np.zeros((64, 64), np.float32)), backend.models()):
        with pytest.raises(ModelUnavailable):
            asyncio.run(call)
    asyncio.run(backend.close())


def test_worker_counts_come_from_avn_workers_variables() -> None:
    assert workers_from_environment({"AVN_WORKERS_STAGING": "4", "AVN_WORKERS_VIEW": "", "OTHER": "1"}) == {
        "staging": 4
    }
    with pytest.raises(ValueError, match="AVN_WORKERS_DETECTION"):
        workers_from_environment({"AVN_WORKERS_DETECTION": "0"})


def test_tokens_come_from_torchserve_key_file_and_follow_its_rewrites(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    credentials = Credentials(key_file=key_file)
    assert credentials.metadata(INFERENCE) == ()  # not written yet: no token
    key_file.write_text(json.dumps({"inference": {"key": "abc"}, "management": {"key": "def"}, "API": {"key": "x"}}))
    assert credentials.metadata(INFERENCE) == (("authorization", "Bearer abc"),)
    assert credentials.metadata(MANAGEMENT) == (("authorization", "Bearer def"),)
    key_file.write_text(json.dumps({"inference": {"key": "new"}, "management": {"key": "def"}}))
    os.utime(key_file, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a restart rewrote it
    assert credentials.metadata(INFERENCE) == (("authorization", "Bearer new"),)
    assert Credentials("given", key_file=key_file).metadata(INFERENCE) == (("authorization", "Bearer given"),)
