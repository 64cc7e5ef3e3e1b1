"""The Open Inference Protocol backend (issue #13) against real OIP servers on loopback: two
TorchServes started with their gRPC port speaking the protocol (``TS_OPEN_INFERENCE_PROTOCOL=oip``),
each serving the test archives. The gateway over OIP answers what it answers over TorchServe's own
API; with both servers as replicas of every model, killing one in the middle of a run fails no
request (the dead replica is set aside and each call retried once on the other)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import build_test_store
from gateway_support import phantom_png

from avn.pipeline.backend import CLASSIFIER_MODELS, MODELS
from avn.pipeline.pipeline import Pipeline
from avn.pipeline.results import DiagnoseRequest, ImagePayload
from avn.serving.torchserve import LOOPBACK, TorchServe, free_ports
from gateway.errors import InvalidImage, ModelUnavailable
from gateway.oip_backend import EndpointError, OipBackend, parse_endpoints
from gateway.oip_stubs import TORCHSERVE_SERVICE
from gateway.settings import Settings
from gateway.torchserve_backend import TorchServeBackend

pytestmark = pytest.mark.slow


def start_oip_server(root: Path) -> TorchServe:
    server = TorchServe(
        build_test_store(root), root / "ts", disable_token_auth=True, gpus=0, system_metrics=False, open_inference=True
    )
    server.start()
    server.wait_until_ready(MODELS, timeout_s=200)
    return server


@pytest.fixture(scope="module")
def oip_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TorchServe]]:
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(start_oip_server(tmp_path_factory.mktemp(f"oip-{name}")))
        yield servers
    finally:
        for server in servers:
            server.stop()


def target(server: TorchServe) -> str:
    return f"{LOOPBACK}:{server.ports.grpc_inference}"


def oip_backend(*servers: TorchServe) -> OipBackend:
    return OipBackend({model: [target(s) for s in servers] for model in MODELS}, service=TORCHSERVE_SERVICE)


def native_backend(server: TorchServe) -> TorchServeBackend:
    return TorchServeBackend(target(server), f"{LOOPBACK}:{server.ports.grpc_management}")


def test_models_detections_and_classifications_match_torchserves_own_api(oip_servers, torchserve_server) -> None:
    oip, native = oip_backend(oip_servers[0]), native_backend(torchserve_server)

    async def both():
        image = np.random.default_rng(0).random((300, 420), dtype=np.float32)
        crops = np.random.default_rng(1).random((2, 224, 224), dtype=np.float32)
        results = {"models": await asyncio.gather(oip.models(), native.models())}
        results["detect"] = await asyncio.gather(oip.detect(image), native.detect(image))
        for model in CLASSIFIER_MODELS:
            stage = "IV" if model == "staging" else None
            results[model] = await asyncio.gather(
                oip.classify(model, crops, stage), native.classify(model, crops, stage)
            )
        await oip.close()
        await native.close()
        return results

    results = asyncio.run(both())
    assert results["models"][0] == results["models"][1]  # versions, input sizes, labels from the cards
    over_oip, over_native = results["detect"]
    assert len(over_oip.scores) > 0
    np.testing.assert_allclose(over_oip.boxes, over_native.boxes, atol=0.01)
    np.testing.assert_allclose(over_oip.scores, over_native.scores, atol=1e-6)
    for model in CLASSIFIER_MODELS:
        over_oip, over_native = results[model]
        assert over_oip.labels == over_native.labels
        np.testing.assert_allclose(over_oip.probabilities, over_native.probabilities, atol=1e-6)
        if model == "staging":
            assert over_oip.cam_labels == over_native.cam_labels == ("IV", "IV")
            np.testing.assert_allclose(over_oip.cams, over_native.cams, atol=1e-6)


def test_a_replica_killed_mid_run_fails_no_request_and_answers_stay_the_same(
    oip_servers, torchserve_server, tmp_path
) -> None:
    payload = ImagePayload(phantom_png(tmp_path).read_bytes())
    over_native = asyncio.run(Pipeline(native_backend(torchserve_server)).diagnose(DiagnoseRequest(payload)))
    replicated = oip_backend(*oip_servers)
    pipeline = Pipeline(replicated)

    async def run(count: int):
        return [await pipeline.diagnose(DiagnoseRequest(payload)) for _ in range(count)]

    before = asyncio.run(run(3))
    oip_servers[1].stop()  # one replica of every model dies
    after = asyncio.run(run(6))
    for diagnosis in before + after:
        assert [h.box for h in diagnosis.heads] == [h.box for h in over_native.heads]
        assert [h.stage_probabilities for h in diagnosis.heads] == [h.stage_probabilities for h in over_native.heads]
    assert {m.version for m in after[-1].models} == {m.version for m in over_native.models}

    alone = oip_backend(oip_servers[1])  # only the dead replica: 503, never a hang or a 500
    with pytest.raises(ModelUnavailable):
        asyncio.run(alone.detect(np.zeros((64, 64), np.float32)))


def test_a_radiograph_the_detector_refuses_is_a_400_over_oip(oip_servers) -> None:
    backend = oip_backend(oip_servers[0])

    async def refused():
        return await backend._predict("detection", {"data": b"not an image"})  # the bytes a broken client would send

    with pytest.raises(InvalidImage, match="detector rejected"):
        asyncio.run(refused())


def test_endpoints_parse_and_the_oip_backend_needs_every_model() -> None:
    assert parse_endpoints("a:1, b:2") == ("a:1", "b:2")
    for bad in ("", "a", "a:b", ":1"):
        with pytest.raises(EndpointError):
            parse_endpoints(bad)
    with pytest.raises(ValueError, match="AVN_OIP_ENDPOINTS_NOTES"):
        Settings(backend="oip", **{f"oip_endpoints_{m}": "x:1" for m in MODELS if m != "notes"})
    with pytest.raises(EndpointError, match="notes"):
        OipBackend({m: [f"x:{port}"] for m, port in zip(MODELS[:-1], free_ports(4), strict=True)})
