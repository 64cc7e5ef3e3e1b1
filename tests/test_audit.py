"""The audit log (issue #11): one JSON line per request on both protocols — who (the key's id, never
the key), what, when, the outcome, the request id and the models' versions — and no PHI anywhere:
not in the logs (every logger at DEBUG, warnings, the audit lines), the answers or the cache.

The PHI test plants a patient's name, ids, birth date, institution and physician in DICOM tags, in
the uploads' file names and in a malformed header field (pydicom quotes a malformed value it reads,
"Invalid value for VR DS: …", unless told not to), sends them over REST and gRPC to
``python -m gateway.service`` with a real redis-server as its cache, and searches everything the
process wrote, every answer, and every Redis key and value.
"""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import grpc
import pydicom
import pytest
import redis
from conftest import RedisServer
from gateway_support import VERSION, ApiKey, keyed_channel, phantom_dicom, write_tiny_store
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_support import GatewayProcess
from web_support import LiveGateway, live_gateway

from avn.pipeline.backend import MODELS
from avn.pipeline.pipeline import Pipeline
from avn.serving.inprocess import InProcessBackend
from gateway.audit import AUDIT_LOGGER_NAME
from gateway.cache import LRUCache
from gateway.grpc_server import BackgroundGrpcServer, pb
from gateway.proto import load
from gateway.rest import create_app
from gateway.settings import Settings

STUBS = load()
RPC_TIMEOUT_S = 60
FIELDS = {"time", "protocol", "operation", "caller", "client", "request_id", "trace_id", "outcome", "status"}
FIELDS |= {"duration_ms", "models"}
# Planted in the DICOM header and the file names; none of it may come out anywhere.
PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN-PHI-QZ",
    "PatientBirthDate": "19610203",
    "OtherPatientIDs": "OTHER-PHI-QZ",
    "AccessionNumber": "ACC-PHI-QZ",
    "InstitutionName": "SAINT-PHI-HOSPITAL",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "StudyDescription": "HIP OF JANE DOE",
}
FILE_NAME = "DOE_JANE_MRN-PHI-QZ.dcm"
MALFORMED = b"QUINCYPHI\\1"  # a PixelSpacing pydicom cannot read as numbers: it would quote it
MARKERS = ("DOE", "JANE", "MRN-PHI", "OTHER-PHI", "ACC-PHI", "SAINT-PHI", "HOUSE", "GREGORY", "19610203", "QUINCY")


def assert_no_phi(text: str, where: str) -> None:
    found = [marker for marker in MARKERS if marker in text]
    assert not found, f"PHI {found} in {where}: …{text[max(0, text.find(found[0]) - 200) :][:400]}…"


def without_base64(text: str) -> str:
    """``text`` without long base64 runs (PNGs; the DICOM outputs, which carry the source's patient
    module by design, to be filed with it): a short marker such as DOE turns up in random base64."""
    return re.sub(r"[A-Za-z0-9+/=]{200,}", "", text)


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [json.loads(record.getMessage()) for record in caplog.records if record.name == AUDIT_LOGGER_NAME]


# ---------------------------------------------------------------- files


def with_value(data: bytes, keyword: str, value: bytes) -> bytes:
    """``data`` (Explicit VR Little Endian) with ``keyword``'s value replaced verbatim, whatever its VR allows."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    marker = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + pydicom.datadict.dictionary_VR(tag).encode()
    start = data.index(marker, 132)
    length = struct.unpack_from("<H", data, start + 6)[0]
    value = value + b" " * (len(value) % 2)
    return data[:start] + marker + struct.pack("<H", len(value)) + value + data[start + 8 + length :]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("audit")
    dataset = pydicom.dcmread(phantom_dicom(root, 0))
    for keyword, value in PHI.items():
        setattr(dataset, keyword, value)
    dataset.PixelSpacing = [0.1, 0.1]
    dataset.NumberOfFrames = 1
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    phi = buffer.getvalue()
    assert all(value.encode() in phi for value in PHI.values())
    return {
        "store": write_tiny_store(root),
        "phi": phi,
        "spacing": with_value(phi, "PixelSpacing", MALFORMED),  # read (reported only): the request succeeds
        "frames": with_value(phi, "NumberOfFrames", b"JANE"),  # a field the decoder needs: 400
        # The source's UIDs belong in the DICOM outputs (they reference it), never in the log.
        "uids": (dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID),
    }


# ---------------------------------------------------------------- the lines, in process


@pytest.fixture(scope="module")
def rest(files: dict, api_key: ApiKey) -> Iterator[LiveGateway]:
    pipeline = Pipeline(InProcessBackend.from_store(files["store"]), LRUCache(8))
    with live_gateway(create_app(pipeline, Settings(api_keys_file=api_key.file, case_bank=None))) as server:
        yield server


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def get(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_every_rest_request_is_one_audit_line_saying_who_what_when_and_how_it_ended(
    rest: LiveGateway, files: dict, api_key: ApiKey, caplog: pytest.LogCaptureFixture
) -> None:
    keyed = {**api_key.headers, "content-type": "application/dicom"}
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER_NAME):
        before = datetime.now().astimezone()
        ok = post(f"{rest.url}/v1/diagnose", files["phi"], {**keyed, "x-request-id": "audit-1"})
        refused = post(f"{rest.url}/v1/diagnose", files["phi"], {"content-type": "application/dicom"})
        invalid = post(f"{rest.url}/v1/diagnose", b"not an image", keyed)
        assert get(f"{rest.url}/healthz") == 200 and get(f"{rest.url}/readyz") == 200  # not audited
        assert get(f"{rest.url}/metrics", api_key.headers) == 200
        assert get(f"{rest.url}/no/such/path", api_key.headers) == 404
    assert [ok[0], refused[0], invalid[0]] == [200, 401, 400]
    lines = audit_lines(caplog)
    assert len(lines) == 5  # one per audited request: not the health checks
    assert all(set(line) == FIELDS and line["protocol"] == "rest" for line in lines)
    diagnosed, unauthenticated, unreadable, metrics, missing = lines
    assert diagnosed | {"time": None, "duration_ms": None, "trace_id": None} == {
        "time": None,
        "protocol": "rest",
        "operation": "diagnose",
        "caller": api_key.id,
        "client": "127.0.0.1",
        "request_id": "audit-1",
        "trace_id": None,
        "outcome": "ok",
        "status": 200,
        "duration_ms": None,
        "models": {name: VERSION for name in MODELS},
    }
    assert datetime.fromisoformat(diagnosed["time"]) >= before.replace(microsecond=0) and diagnosed["duration_ms"] > 0
    assert unauthenticated["caller"] is None and unauthenticated["outcome"] == "Unauthenticated"
    assert (unauthenticated["status"], unauthenticated["operation"]) == (401, "POST /v1/diagnose")
    assert unauthenticated["request_id"] == refused[1]["x-request-id"]  # the id the client was told
    assert (unreadable["outcome"], unreadable["status"], unreadable["caller"]) == ("InvalidImage", 400, api_key.id)
    assert unreadable["request_id"] == invalid[1]["x-request-id"] and unreadable["models"] is None
    assert (metrics["operation"], metrics["outcome"], metrics["status"]) == ("GET /metrics", "ok", 200)
    assert (missing["operation"], missing["outcome"], missing["status"]) == ("GET (no route)", "HTTP404", 404)
    text = "\n".join(json.dumps(line) for line in lines)
    assert api_key.key.split(".")[1] not in text  # the key's id, never the key
    assert_no_phi(text, "the audit lines")


def test_every_grpc_call_is_one_audit_line(files: dict, api_key: ApiKey, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = Pipeline(InProcessBackend.from_store(files["store"]))
    with (
        caplog.at_level(logging.INFO, logger=AUDIT_LOGGER_NAME),
        BackgroundGrpcServer(pipeline, authenticator=api_key.authenticator()) as server,
    ):
        with keyed_channel(server.target, api_key.key) as channel:
            stub = STUBS.services.DiagnosisStub(channel)
            stub.Diagnose(
                pb.DiagnoseRequest(image=files["phi"]), timeout=RPC_TIMEOUT_S, metadata=[("x-request-id", "g-1")]
            )
            with pytest.raises(grpc.RpcError):
                stub.Diagnose(pb.DiagnoseRequest(image=files["frames"]), timeout=RPC_TIMEOUT_S)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())  # not audited
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError):
            STUBS.services.DiagnosisStub(channel).ListModels(pb.ListModelsRequest(), timeout=RPC_TIMEOUT_S)
    lines = audit_lines(caplog)
    assert len(lines) == 3 and all(set(line) == FIELDS and line["protocol"] == "grpc" for line in lines)
    diagnosed, invalid, refused = lines
    assert (diagnosed["operation"], diagnosed["caller"], diagnosed["request_id"]) == ("diagnose", api_key.id, "g-1")
    assert (diagnosed["outcome"], diagnosed["status"]) == ("ok", "OK")
    assert diagnosed["models"] == {name: VERSION for name in MODELS} and diagnosed["client"] == "127.0.0.1"
    assert (invalid["outcome"], invalid["status"]) == ("InvalidImage", "INVALID_ARGUMENT")
    assert (refused["operation"], refused["caller"]) == ("/avn.v1.Diagnosis/ListModels", None)
    assert (refused["outcome"], refused["status"]) == ("Unauthenticated", "UNAUTHENTICATED") and refused["request_id"]
    assert_no_phi("\n".join(json.dumps(line) for line in lines), "the audit lines")


# ---------------------------------------------------------------- no PHI anywhere, the real process


def multipart(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/dicom\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in parts
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_planted_phi_reaches_no_log_answer_or_cache_entry(
    files: dict, api_key: ApiKey, redis_server: RedisServer, tmp_path: Path
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    gateway = GatewayProcess(
        files["store"],
        tmp_path,
        AVN_API_KEYS_FILE=str(api_key.file),
        AVN_REDIS_URL=redis_server.url,
        AVN_LOG_LEVEL="DEBUG",  # everything any logger says
        AVN_AUDIT_LOG_FILE=str(audit_file),
        PYTHONWARNINGS="always",  # every warning printed, repeated ones too
    )
    answers: list[str] = []
    with gateway.start():
        url, keyed = gateway.rest_url, {**api_key.headers, "content-type": "application/dicom"}
        one, content_type = multipart([(FILE_NAME, files["phi"])])
        study, study_type = multipart([(FILE_NAME, files["phi"]), (f"2_{FILE_NAME}", files["spacing"])])
        requests = [
            (f"{url}/v1/diagnose", files["phi"], keyed, 200),
            (f"{url}/v1/diagnose", one, {**api_key.headers, "content-type": content_type}, 200),
            (f"{url}/v1/studies", study, {**api_key.headers, "content-type": study_type}, 200),
            (f"{url}/v1/render", files["phi"], keyed, 200),
            (f"{url}/v1/diagnose?include_dicom=true", files["phi"], keyed, 200),  # SR and annotated copy
            (f"{url}/v1/diagnose", files["spacing"], keyed, 200),
            (f"{url}/v1/diagnose", files["frames"], keyed, 400),
            (f"{url}/v1/diagnose", files["phi"], {"content-type": "application/dicom"}, 401),
        ]
        for address, body, headers, expected in requests:
            status, response_headers, content = post(address, body, headers)
            assert status == expected, (address, status, content[:300])
            answers.append(json.dumps(response_headers) + content.decode("latin-1"))
        with keyed_channel(gateway.grpc_target, api_key.key) as channel:
            stub = STUBS.services.DiagnosisStub(channel)
            answers.append(str(stub.Diagnose(pb.DiagnoseRequest(image=files["phi"]), timeout=RPC_TIMEOUT_S)))
            with pytest.raises(grpc.RpcError) as raised:
                stub.Diagnose(pb.DiagnoseRequest(image=files["frames"]), timeout=RPC_TIMEOUT_S)
            answers.append(f"{raised.value.details()} {raised.value.trailing_metadata()}")
        cache = redis.Redis.from_url(redis_server.url)
        entries = [(key, cache.get(key)) for key in cache.scan_iter()]
    assert gateway.wait() == 0
    assert entries  # the diagnoses were cached (one entry: every upload has the same pixels)
    for key, value in entries:
        text = without_base64(key.decode("latin-1") + (value or b"").decode("latin-1"))
        assert_no_phi(text, f"the cache entry {key!r}")
    for answer in answers:
        assert_no_phi(without_base64(answer), "an answer")
    output = gateway.output()
    assert "DEBUG" in output  # the check below read everything, debug lines included
    assert_no_phi(output, "the gateway's log")
    assert not [uid for uid in files["uids"] if uid in output], "a source UID in the gateway's log"
    lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert len(lines) == len(requests) + 2  # one per request: no health check, no second line
    assert [line["status"] for line in lines[-2:]] == ["OK", "INVALID_ARGUMENT"]
    assert_no_phi(audit_file.read_text(), "the audit log")
