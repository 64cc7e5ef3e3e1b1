"""The gRPC service end to end: a real grpc.aio server on a free loopback port over the in-process
backend, loaded from a model store of real TorchServe archives holding tiny untrained models.

Untrained models make the numbers arbitrary but not the structure: each check below is one the
service must satisfy whatever the weights (labels, shapes, the fusion arithmetic on the wire,
derived classes, aggregation, image sizes, statuses).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pydicom
import pytest
from gateway_support import (
    TINY_INPUT,
    VERSION,
    ApiKey,
    first_index_of_view,
    keyed_channel,
    phantom_dicom,
    phantom_png,
    write_tiny_store,
)
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from avn.pipeline.backend import MODELS
from avn.pipeline.confidence import CONFIDENT_DETECTION_SCORE
from avn.pipeline.pipeline import Pipeline
from avn.serving.inprocess import InProcessBackend
from avn.vocabulary import NOTE_STAGE, NOTES, SIDES, STAGES, VIEWS, collapse_of, most_severe, presence_of
from gateway.cache import LRUCache
from gateway.grpc_server import BackgroundGrpcServer, pb
from gateway.metrics import GatewayMetrics
from gateway.proto import PROTO_FILE, PROTO_ROOT, SERVICE_NAME, load

STUBS = load()
RPC_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("grpc")
    store = write_tiny_store(root)
    return {
        "store": store,
        "png": phantom_png(root, 0),
        "dicom": phantom_dicom(root, 1, photometric="MONOCHROME1"),
        "fl_png": phantom_png(root, first_index_of_view("FL")),
    }


@pytest.fixture(scope="module")
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture(scope="module")
def server(files: dict[str, Path], metrics: GatewayMetrics, api_key: ApiKey) -> BackgroundGrpcServer:
    pipeline = Pipeline(InProcessBackend.from_store(files["store"]), LRUCache(16))
    with BackgroundGrpcServer(pipeline, metrics=metrics, authenticator=api_key.authenticator()) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: BackgroundGrpcServer, api_key: ApiKey) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with keyed_channel(server.target, api_key.key, options) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel):
    return STUBS.services.DiagnosisStub(channel)


def diagnose(stub, data: bytes, media_type: str = "", **fields) -> pb.DiagnoseResponse:
    return stub.Diagnose(pb.DiagnoseRequest(image=data, media_type=media_type, **fields), timeout=RPC_TIMEOUT_S)


def check_diagnosis(response: pb.DiagnoseResponse, width: int, height: int) -> None:
    """What every full result must satisfy, whatever the weights."""
    assert (response.width, response.height) == (width, height)
    assert response.request_id and not response.cache_hit
    assert [(m.name, m.version) for m in response.models] == [(name, VERSION) for name in MODELS]
    assert response.timings.detect_ms > 0 and response.timings.classify_ms > 0 and response.timings.decode_ms > 0
    assert response.timings.total_ms >= response.timings.detect_ms + response.timings.classify_ms
    assert response.view.view in VIEWS and [p.label for p in response.view.probabilities] == list(VIEWS)
    assert 1 <= len(response.heads) <= 2
    centres = [(h.box.x0 + h.box.x1) / 2 for h in response.heads]
    assert centres == sorted(centres)
    if len(response.heads) == 2:  # one head per image half, one per side
        assert centres[0] < width / 2 <= centres[1]
        assert {h.side for h in response.heads} == set(SIDES)
    view_mean = np.mean([[p.probability for p in h.view_probabilities] for h in response.heads], axis=0)
    np.testing.assert_allclose([p.probability for p in response.view.probabilities], view_mean, atol=1e-5)
    for head in response.heads:
        assert 0 <= head.box.x0 < head.box.x1 <= width and 0 <= head.box.y0 < head.box.y1 <= height
        # untrained weights: every head is unsure, and the wire says why
        assert head.low_confidence and len(head.low_confidence_reasons) >= 1
        assert (head.score < CONFIDENT_DETECTION_SCORE) == any(
            "detector score" in r for r in head.low_confidence_reasons
        )
        assert head.side in SIDES and 0 <= head.side_probability <= 1
        stage_p = {p.label: p.probability for p in head.stage_probabilities}
        assert list(stage_p) == list(STAGES) and sum(stage_p.values()) == pytest.approx(1, abs=1e-5)
        assert head.stage == max(stage_p, key=stage_p.get) and head.stage_probability == pytest.approx(
            stage_p[head.stage]
        )
        assert (head.presence, head.collapse) == (presence_of(head.stage), collapse_of(head.stage))
        assert [n.note for n in head.notes] == list(NOTES)
        for note in head.notes:  # prior fusion, checked on the wire
            assert note.stage == NOTE_STAGE[note.note]
            assert note.probability == pytest.approx(note.raw_probability * stage_p[note.stage], abs=1e-6)
            assert note.passed == (note.probability >= response.note_threshold)
        cam = np.asarray(Image.open(io.BytesIO(head.cam_png)))
        assert cam.shape == (TINY_INPUT, TINY_INPUT) and cam.dtype == np.uint8
        assert head.cam_stage == head.stage
        assert head.cam_box.x1 - head.cam_box.x0 == head.cam_box.y1 - head.cam_box.y0 > 0


# ---------------------------------------------------------------- results


def test_diagnose_a_phantom_png_with_its_overlay(stub, files) -> None:
    data = files["png"].read_bytes()
    width, height = Image.open(files["png"]).size
    response = diagnose(stub, data, "image/png", include_overlay=True)
    check_diagnosis(response, width, height)
    overlay = Image.open(io.BytesIO(response.overlay_png))
    assert overlay.size == (width, height) and overlay.mode == "RGB"


def test_diagnose_a_phantom_monochrome1_dicom(stub, files) -> None:
    data = files["dicom"].read_bytes()
    ds = pydicom.dcmread(files["dicom"])
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    response = diagnose(stub, data)  # media type left empty: recognised from the preamble
    check_diagnosis(response, int(ds.Columns), int(ds.Rows))
    assert response.overlay_png == b""


def test_a_repeat_is_served_from_the_cache_under_the_clients_request_id(stub, files) -> None:
    request = pb.DiagnoseRequest(image=files["fl_png"].read_bytes(), options=pb.DiagnoseOptions(note_threshold=0.2))
    first = stub.Diagnose(request, timeout=RPC_TIMEOUT_S)
    second, call = stub.Diagnose.with_call(request, timeout=RPC_TIMEOUT_S, metadata=[("x-request-id", "ris-42")])
    assert not first.cache_hit and second.cache_hit and second.request_id == "ris-42"
    assert second.note_threshold == pytest.approx(0.2)
    assert list(second.heads) == list(first.heads) and second.timings.detect_ms == 0


def test_diagnose_study_reports_the_most_severe_stage_per_side(stub, files) -> None:
    paths = [files["png"], files["dicom"], files["fl_png"]]
    request = pb.StudyRequest(radiographs=[pb.Radiograph(image=p.read_bytes()) for p in paths])
    response = stub.DiagnoseStudy(request, timeout=RPC_TIMEOUT_S)
    assert [r.index for r in response.radiographs] == [0, 1, 2] and not response.skipped
    assert [(m.name, m.version) for m in response.models] == [(name, VERSION) for name in MODELS]
    seen: dict[str, list[tuple[int, str]]] = {}
    for item in response.radiographs:
        assert item.result.request_id == f"{response.request_id}/{item.index}"
        for head in item.result.heads:
            seen.setdefault(head.side, []).append((item.index, head.stage))
    assert sorted(s.side for s in response.sides) == sorted(seen)
    for side in response.sides:
        stages = [stage for _, stage in seen[side.side]]
        assert side.stage == most_severe(stages)
        assert (side.presence, side.collapse) == (presence_of(side.stage), collapse_of(side.stage))
        assert list(side.radiograph_indices) == sorted({index for index, _ in seen[side.side]})
        assert (side.radiograph_index, side.stage) in seen[side.side]


def test_grpc_calls_are_counted_and_timed_in_the_metrics(stub, files, metrics) -> None:
    def count(outcome: str, operation: str = "diagnose") -> float:
        value = metrics.registry.get_sample_value(
            "avn_requests_total", {"protocol": "grpc", "operation": operation, "outcome": outcome}
        )
        return value or 0.0

    def latency_count() -> float:
        return (
            metrics.registry.get_sample_value(
                "avn_request_duration_seconds_count", {"protocol": "grpc", "operation": "diagnose"}
            )
            or 0.0
        )

    ok, bad, timed = count("ok"), count("InvalidImage"), latency_count()
    diagnose(stub, files["png"].read_bytes(), "image/png")
    with pytest.raises(grpc.RpcError):
        diagnose(stub, b"not an image at all", "image/png")
    stub.ListModels(pb.ListModelsRequest(), timeout=RPC_TIMEOUT_S)
    assert (count("ok"), count("InvalidImage"), latency_count()) == (ok + 1, bad + 1, timed + 2)
    assert count("ok", "models") >= 1
    text = metrics.render().decode()
    assert 'avn_request_errors_total{error="InvalidImage",operation="diagnose",protocol="grpc"}' in text
    assert "avn_diagnoses_total{cache=" in text


def test_list_models_names_all_five_with_versions_sizes_and_labels(stub) -> None:
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=RPC_TIMEOUT_S).models}
    assert list(models) == list(MODELS)
    assert {m.version for m in models.values()} == {VERSION}
    assert models["detection"].input_size == 320 and models["staging"].input_size == TINY_INPUT
    assert list(models["staging"].labels) == list(STAGES) and list(models["notes"].labels) == list(NOTES)


# ---------------------------------------------------------------- health and reflection


def test_health_is_serving_for_the_server_and_the_service(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service_and_serves_its_contract(channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    listed, contract = list(reflection.ServerReflectionInfo(iter(requests), timeout=10))
    assert SERVICE_NAME in {s.name for s in listed.list_services_response.service}
    assert "grpc.health.v1.Health" in {s.name for s in listed.list_services_response.service}
    descriptor = descriptor_pb2.FileDescriptorProto.FromString(
        contract.file_descriptor_response.file_descriptor_proto[0]
    )
    assert descriptor.name == PROTO_FILE and descriptor.package == "avn.v1"
    assert [m.name for m in descriptor.service[0].method] == ["Diagnose", "DiagnoseStudy", "ListModels"]


# ---------------------------------------------------------------- bad input


def _dicom_without_pixels(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


BAD_INPUTS = {
    "empty": (lambda f: b"", "empty image"),
    "garbage": (lambda f: b"GIF89a garbage, not a radiograph" * 4, "not a PNG, JPEG or DICOM"),
    "truncated-png": (lambda f: f["png"].read_bytes()[:2000], "not a readable PNG or JPEG image"),
    "dicom-without-pixels": (lambda f: _dicom_without_pixels(f["dicom"]), "DICOM file has no pixel data"),
    "wrong-media-type": (lambda f: f["png"].read_bytes(), "application/dicom was declared but the bytes are image/png"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_invalid_argument_with_a_specific_message_and_the_server_keeps_answering(
    stub, files, case
) -> None:
    make, message = BAD_INPUTS[case]
    media_type = "application/dicom" if case == "wrong-media-type" else ""
    with pytest.raises(grpc.RpcError) as raised:
        diagnose(stub, make(files), media_type)
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details() and "request " in error.details()
    trailing = dict(error.trailing_metadata())
    assert trailing["avn-error-type"] == "InvalidImage" and trailing["x-request-id"]
    assert len(diagnose(stub, files["png"].read_bytes()).heads) >= 1  # still serving


def test_a_bad_radiograph_fails_the_study_naming_its_index(stub, files) -> None:
    request = pb.StudyRequest(
        radiographs=[pb.Radiograph(image=files["png"].read_bytes()), pb.Radiograph(image=b"junk")]
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.DiagnoseStudy(request, timeout=RPC_TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "radiograph 1:" in raised.value.details()


def test_an_invalid_option_is_invalid_argument(stub, files) -> None:
    request = pb.DiagnoseRequest(image=files["png"].read_bytes(), options=pb.DiagnoseOptions(cam_stage="V"))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Diagnose(request, timeout=RPC_TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cam_stage 'V'" in raised.value.details()


def test_a_missing_model_makes_the_server_not_serving_and_requests_unavailable(files, tmp_path, api_key) -> None:
    partial = tmp_path / "store"
    partial.mkdir()
    for name in MODELS[:-1]:  # everything but the notes model
        (partial / f"{name}.mar").symlink_to(files["store"] / f"{name}.mar")
    pipeline = Pipeline(InProcessBackend.from_store(partial))
    with BackgroundGrpcServer(pipeline, authenticator=api_key.authenticator()) as running:
        with keyed_channel(running.target, api_key.key) as channel:
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            health = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as raised:
                diagnose(STUBS.services.DiagnosisStub(channel), files["png"].read_bytes())
    error = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "notes" in error.details()
    assert int(dict(error.trailing_metadata())["retry-after"]) > 0


# ---------------------------------------------------------------- a client made from protos/ alone


CLIENT = textwrap.dedent(
    """
    import sys
    import grpc
    from avn.v1 import diagnosis_pb2, diagnosis_pb2_grpc
    assert diagnosis_pb2.__file__.startswith(sys.argv[1]), diagnosis_pb2.__file__
    key = [("authorization", "Bearer " + sys.argv[4])]
    with grpc.insecure_channel(sys.argv[2]) as channel:
        stub = diagnosis_pb2_grpc.DiagnosisStub(channel)
        request = diagnosis_pb2.DiagnoseRequest(image=open(sys.argv[3], "rb").read())
        answer = stub.Diagnose(request, timeout=60, metadata=key)
    print(len(answer.heads), answer.heads[0].stage, len(answer.heads[0].notes))
    """
)


def test_a_client_generated_from_the_protos_alone_gets_a_full_result_for_a_dicom(
    server, files, tmp_path, api_key
) -> None:
    out = tmp_path / "client"
    out.mkdir()
    shutil.copytree(PROTO_ROOT, tmp_path / "protos")
    generate = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{tmp_path / 'protos'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        PROTO_FILE,
    ]
    subprocess.run(generate, check=True, cwd=tmp_path, capture_output=True)
    for package in (out / "avn", out / "avn" / "v1"):  # a client's own package; ours is installed too
        (package / "__init__.py").touch()
    (out / "client.py").write_text(CLIENT)
    result = subprocess.run(
        [sys.executable, str(out / "client.py"), str(out), server.target, str(files["dicom"]), api_key.key],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    heads, stage, notes = result.stdout.split()
    assert 1 <= int(heads) <= 2 and stage in STAGES and int(notes) == len(NOTES)
