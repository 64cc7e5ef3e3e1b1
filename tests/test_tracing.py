"""Traces from request to model (issue #16): the span tree of one diagnosis over REST and gRPC, the
client's W3C traceparent continued, the trace id in the answer and the audit line, no PHI in any
span; and the real OTLP exporter of `python -m gateway.service` against a collector on loopback.

The SDK's tracer provider with an in-memory exporter is installed once for this module (the
OpenTelemetry API allows one global provider per process) and shut down at its end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pydicom
import pytest
from fastapi.testclient import TestClient
from gateway_support import VERSION, ApiKey, keyed_channel, phantom_dicom, write_tiny_store
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from avn.pipeline import tracing as pipeline_tracing
from avn.pipeline.backend import CLASSIFIER_MODELS
from avn.pipeline.pipeline import Pipeline
from avn.serving.inprocess import InProcessBackend
from avn.serving.torchserve import LOOPBACK, free_ports
from gateway.cache import LRUCache
from gateway.grpc_server import BackgroundGrpcServer, pb
from gateway.proto import load
from gateway.rest import create_app
from gateway.settings import Settings
from gateway.tracing import TRACE_ID_KEY, tracing_wanted

ROOT = Path(__file__).resolve().parent.parent
STUBS = load()
RPC_TIMEOUT_S = 60
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
# What a hospital's DICOM carries and no trace may: the patient's name and id, the upload's file name.
PATIENT_NAME, PATIENT_ID = "DOE^JANE", "MRN-4711-PHI"
FILE_NAME = "DOE_JANE_MRN-4711-PHI.dcm"
PIPELINE_STEPS = ["decode", "cache lookup", "detect", "crop", "classify", "fuse", "render", "cache store"]
# Every attribute key a span may carry: the pipeline's own and the transports' semantic conventions.
ALLOWED_ATTRIBUTES = {value for name, value in vars(pipeline_tracing).items() if name.startswith("ATTRIBUTE_")} | {
    "http.request.method",
    "http.route",
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "avn.operation",
}


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()  # later modules in this process record nothing more


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tracing")
    dicom = phantom_dicom(root, 0)
    dataset = pydicom.dcmread(dicom)
    dataset.PatientName, dataset.PatientID = PATIENT_NAME, PATIENT_ID
    dataset.save_as(dicom)
    return {"store": write_tiny_store(root), "dicom": dicom}


def new_pipeline(files: dict[str, Path]) -> Pipeline:
    return Pipeline(InProcessBackend.from_store(files["store"]), LRUCache(8))


@pytest.fixture(scope="module")
def client(files: dict[str, Path], spans: InMemorySpanExporter, api_key: ApiKey) -> Iterator[TestClient]:
    app = create_app(new_pipeline(files), Settings(case_bank=None, api_keys_file=api_key.file))
    with TestClient(app, headers=api_key.headers) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def grpc_stub(files: dict[str, Path], spans: InMemorySpanExporter, api_key: ApiKey):
    with (
        BackgroundGrpcServer(new_pipeline(files), authenticator=api_key.authenticator()) as server,
        keyed_channel(server.target, api_key.key) as channel,
    ):
        yield STUBS.services.DiagnosisStub(channel)


# ---------------------------------------------------------------- the span tree


def children(parent: ReadableSpan, finished: list[ReadableSpan]) -> list[ReadableSpan]:
    found = [s for s in finished if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return sorted(found, key=lambda s: s.start_time)


def only(name: str, finished: list[ReadableSpan]) -> ReadableSpan:
    matches = [s for s in finished if s.name == name]
    assert len(matches) == 1, [s.name for s in finished]
    return matches[0]


def check_diagnosis_tree(root: ReadableSpan, finished: list[ReadableSpan], heads: int) -> None:
    """One computed diagnosis below ``root``: every step, a span per crop and per model call."""
    assert [s.name for s in children(root, finished)] == ["diagnose"]
    diagnose = children(root, finished)[0]
    steps = {s.name: s for s in children(diagnose, finished)}
    assert [s.name for s in children(diagnose, finished)] == PIPELINE_STEPS
    assert steps["cache lookup"].attributes["avn.cache.hit"] is False
    assert steps["decode"].attributes["avn.image.format"] == "dicom"
    assert steps["detect"].attributes["avn.heads"] == heads
    [detector] = children(steps["detect"], finished)
    assert (detector.name, detector.attributes["avn.model.version"]) == ("model detection", VERSION)
    crops = children(steps["crop"], finished)
    assert [(s.name, s.attributes["avn.head.index"]) for s in crops] == [("crop head", i) for i in range(heads)]
    calls = {s.attributes["avn.model.name"]: s for s in children(steps["classify"], finished)}
    assert set(calls) == set(CLASSIFIER_MODELS)
    for model, call in calls.items():
        assert call.name == f"model {model}"
        assert call.attributes["avn.model.version"] == VERSION and call.attributes["avn.model.items"] == heads
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}


def check_no_phi(finished: list[ReadableSpan]) -> None:
    for span in finished:
        assert set(span.attributes) <= ALLOWED_ATTRIBUTES, (span.name, set(span.attributes) - ALLOWED_ATTRIBUTES)
        text = " ".join([span.name, *map(str, span.attributes.values()), *(e.name for e in span.events)])
        for secret in ("DOE", "JANE", "4711", FILE_NAME):
            assert secret not in text, (span.name, text)


def test_one_rest_diagnosis_is_one_trace_from_request_to_each_model(
    client: TestClient, spans: InMemorySpanExporter, files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    spans.clear()
    upload = {"file": (FILE_NAME, files["dicom"].read_bytes(), "application/dicom")}
    with caplog.at_level(logging.INFO, logger="avn.audit"):
        response = client.post("/v1/diagnose", files=upload, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200, response.text
    finished = list(spans.get_finished_spans())
    root = only("POST /v1/diagnose", finished)
    assert root.kind == SpanKind.SERVER and root.attributes["http.route"] == "/v1/diagnose"
    # The client's traceparent is honoured: same trace, the client's span as parent.
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE_ID and f"{root.parent.span_id:016x}" == CLIENT_SPAN_ID
    check_diagnosis_tree(root, finished, heads=len(response.json()["heads"]))
    check_no_phi(finished)
    assert response.headers[TRACE_ID_KEY] == CLIENT_TRACE_ID
    request_id = response.headers["x-request-id"]
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "avn.audit"]
    assert (line["operation"], line["outcome"], line["request_id"]) == ("diagnose", "ok", request_id)
    assert line["trace_id"] == CLIENT_TRACE_ID


def test_a_cache_hit_ends_the_tree_at_the_lookup(client: TestClient, spans: InMemorySpanExporter, files) -> None:
    client.post("/v1/diagnose", content=files["dicom"].read_bytes())  # fills the cache (or it already was)
    spans.clear()
    response = client.post("/v1/diagnose", content=files["dicom"].read_bytes())
    assert response.json()["cache_hit"] is True
    finished = list(spans.get_finished_spans())
    diagnose = only("diagnose", finished)
    assert [s.name for s in children(diagnose, finished)] == ["decode", "cache lookup"]
    assert only("cache lookup", finished).attributes["avn.cache.hit"] is True
    # No traceparent sent: a new trace, whose id the answer carries.
    assert response.headers[TRACE_ID_KEY] == f"{only('POST /v1/diagnose', finished).context.trace_id:032x}"


def test_a_failed_request_is_an_error_span_with_its_type_only(client: TestClient, spans: InMemorySpanExporter) -> None:
    spans.clear()
    response = client.post(
        "/v1/diagnose", content=b"not a radiograph of DOE^JANE", headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 400 and response.headers[TRACE_ID_KEY] == CLIENT_TRACE_ID
    finished = list(spans.get_finished_spans())
    root = only("POST /v1/diagnose", finished)
    assert root.status.status_code == StatusCode.ERROR and root.attributes["error.type"] == "InvalidImage"
    assert only("decode", finished).attributes["error.type"] == "InvalidImage"
    check_no_phi(finished)  # the error message quotes nothing into the trace


def test_one_grpc_diagnosis_is_one_trace_and_the_trace_id_is_trailing_metadata(
    grpc_stub, spans: InMemorySpanExporter, files: dict[str, Path]
) -> None:
    spans.clear()
    answer, call = grpc_stub.Diagnose.with_call(
        pb.DiagnoseRequest(image=files["dicom"].read_bytes()),
        metadata=(("traceparent", TRACEPARENT),),
        timeout=RPC_TIMEOUT_S,
    )
    finished = list(spans.get_finished_spans())
    root = only("avn.v1.Diagnosis/Diagnose", finished)
    assert root.kind == SpanKind.SERVER and root.attributes["rpc.method"] == "Diagnose"
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE_ID and f"{root.parent.span_id:016x}" == CLIENT_SPAN_ID
    check_diagnosis_tree(root, finished, heads=len(answer.heads))
    check_no_phi(finished)
    assert dict(call.trailing_metadata())[TRACE_ID_KEY] == CLIENT_TRACE_ID


def test_a_failed_grpc_call_carries_the_trace_id_too(grpc_stub, spans: InMemorySpanExporter) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        grpc_stub.Diagnose(
            pb.DiagnoseRequest(image=b"garbage"), metadata=(("traceparent", TRACEPARENT),), timeout=RPC_TIMEOUT_S
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(raised.value.trailing_metadata())[TRACE_ID_KEY] == CLIENT_TRACE_ID


def test_tracing_is_off_unless_an_endpoint_is_configured() -> None:
    assert not tracing_wanted(Settings(), {})
    assert tracing_wanted(Settings(otlp_endpoint="http://collector:4317"), {})
    assert tracing_wanted(Settings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert not tracing_wanted(Settings(otlp_endpoint="http://collector:4317"), {"OTEL_SDK_DISABLED": "true"})


# ---------------------------------------------------------------- the real exporter, end to end


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):  # noqa: N802 — the generated service's method name
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, str, dict]]:
        """(service.name, span name, attributes) of every span received, trace ids as hex."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        found.append((resource.get("service.name"), span.name, span.trace_id.hex()))
        return found


def test_the_gateway_exports_its_traces_over_otlp(files: dict[str, Path], tmp_path: Path, api_key: ApiKey) -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    collector_port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    grpc_port, rest_port = free_ports(2)
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AVN_", "OTEL_"))},
        "AVN_BACKEND": "embedded",
        "AVN_MODEL_STORE": str(files["store"]),
        "AVN_GRPC_PORT": str(grpc_port),
        "AVN_REST_PORT": str(rest_port),
        "AVN_CASE_BANK": "",
        "AVN_API_KEYS_FILE": str(api_key.file),
        "AVN_OTLP_ENDPOINT": f"http://{LOOPBACK}:{collector_port}",
        "AVN_TRACE_SERVICE_NAME": "avn-gateway-test",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    log = tmp_path / "gateway.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.service"], env=environment, cwd=tmp_path, stdout=output, stderr=output
        )
    try:
        wait_until_ready(f"http://{LOOPBACK}:{rest_port}", process, log)
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{rest_port}/v1/diagnose",
            data=files["dicom"].read_bytes(),
            headers={"Content-Type": "application/dicom", "traceparent": TRACEPARENT, **api_key.headers},
        )
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S) as response:
            assert response.headers[TRACE_ID_KEY] == CLIENT_TRACE_ID
        process.send_signal(signal.SIGTERM)  # a clean stop flushes the spans still queued
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        server.stop(0)
    received = [(service, name) for service, name, trace_id in collector.spans() if trace_id == CLIENT_TRACE_ID]
    assert ("avn-gateway-test", "POST /v1/diagnose") in received
    assert {("avn-gateway-test", f"model {model}") for model in ("detection", *CLASSIFIER_MODELS)} <= set(received)


def wait_until_ready(base: str, process: subprocess.Popen, log: Path, within_s: float = 120) -> None:
    deadline = time.monotonic() + within_s
    while True:
        assert process.poll() is None, f"the gateway exited with {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"not ready after {within_s} s:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
