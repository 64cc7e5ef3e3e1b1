"""The DICOM outputs (issue #12, deliverable 2): per DICOM radiograph a Comprehensive SR following
TID 1500 and the annotated radiograph as a Secondary Capture, both in the source's study. Each is
checked the way a PACS would meet it: Debian's ``dciodvfy`` finds no error, dcmtk's ``dcmdump``
and pydicom read it back, and the content says what the diagnosis says (codes, laterality, stage,
probabilities, the head box referencing the source image). Over the pipeline, REST, gRPC and
``avn diagnose --dicom-out``, with tiny untrained models (tests/gateway_support.py)."""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from gateway_support import ApiKey, keyed_channel, phantom_dicom, phantom_png, write_tiny_run
from PIL import Image
from typer.testing import CliRunner

from avn.cli import app
from avn.integration import codes
from avn.integration.reporting import coding_scheme_identification
from avn.pipeline.errors import InvalidArgument
from avn.pipeline.pipeline import Pipeline
from avn.pipeline.results import DiagnoseOptions, DiagnoseRequest, Diagnosis, ImagePayload
from avn.serving.inprocess import InProcessBackend
from gateway.cache import LRUCache
from gateway.grpc_server import BackgroundGrpcServer
from gateway.proto import load
from gateway.rest import create_app
from gateway.settings import Settings

CR_INDEX, DX_INDEX = 0, 3  # phantom radiographs written as CR and as DX
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("dicom-outputs") / "run")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    return {"CR": phantom_dicom(folder, CR_INDEX), "DX": phantom_dicom(folder, DX_INDEX)}


def diagnose(pipeline: Pipeline, data: bytes, **options) -> Diagnosis:
    request = DiagnoseRequest(ImagePayload(data), DiagnoseOptions(include_dicom=True, **options))
    return asyncio.run(pipeline.diagnose(request))


def dciodvfy_errors(data: bytes, folder: Path) -> list[str]:
    """The error lines of Debian's DICOM validator on ``data`` (warnings are allowed)."""
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is not installed (make system-deps installs dicom3tools)")
    path = folder / "checked.dcm"
    path.write_bytes(data)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def dcmdump_reads(data: bytes, folder: Path) -> str:
    path = folder / "dumped.dcm"
    path.write_bytes(data)
    run = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def assert_valid_outputs(result: Diagnosis, source: Path, folder: Path) -> tuple[pydicom.Dataset, pydicom.Dataset]:
    for data in (result.dicom_sr, result.dicom_annotated):
        assert data, "an output is missing"
        assert dciodvfy_errors(data, folder) == []
        dcmdump_reads(data, folder)
    return read(result.dicom_sr), read(result.dicom_annotated)


# ---------------------------------------------------------------- the SR and the annotated copy


@pytest.mark.parametrize("kind", ["CR", "DX"])
def test_the_sr_and_the_annotated_copy_pass_dciodvfy_and_land_in_the_source_study(
    run_dir: Path, sources: dict[str, Path], kind: str, tmp_path: Path
) -> None:
    source = pydicom.dcmread(sources[kind], stop_before_pixels=True)
    result = diagnose(Pipeline(InProcessBackend.from_run(run_dir)), sources[kind].read_bytes())
    sr, annotated = assert_valid_outputs(result, sources[kind], tmp_path)
    assert (sr.SOPClassUID, annotated.SOPClassUID) == (SR_CLASS, SC_CLASS)
    for output in (sr, annotated):
        assert output.StudyInstanceUID == source.StudyInstanceUID
        assert output.PatientID == source.PatientID and output.AccessionNumber == source.AccessionNumber
        assert output.SeriesInstanceUID != source.SeriesInstanceUID
        assert output.SoftwareVersions == result.software_version
    assert result.overlay_png is None  # rendered for the copy, not returned unasked


def test_the_sr_reports_every_head_coded_with_its_box_on_the_source_image(
    run_dir: Path, sources: dict[str, Path]
) -> None:
    source = pydicom.dcmread(sources["CR"], stop_before_pixels=True)
    result = diagnose(Pipeline(InProcessBackend.from_run(run_dir)), sources["CR"].read_bytes(), note_threshold=0.0)
    sr = read(result.dicom_sr)
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == source.StudyInstanceUID
    groups = measurement_groups(sr)
    assert len(groups) == len(result.heads)
    for head, group in zip(result.heads, groups, strict=True):
        items = flatten(group)
        assert coded(items, "Finding Site") == codes.FEMORAL_HEAD.value
        assert coded(items, "Laterality") == codes.LATERALITY[head.side].value
        assert coded(items, "Finding") == codes.FINDING.value
        assert coded(items, codes.STAGE_NAME.meaning) == codes.STAGE_VALUE[head.stage].value
        assert coded(items, codes.PRESENCE_NAME.meaning) == codes.PRESENCE_VALUE[head.presence].value
        # note_threshold 0: every note passes, each one a coded finding of the head
        notes = [i.ConceptCodeSequence[0].CodeValue for i in items if name_of(i) == codes.NOTE_NAME.meaning]
        assert notes == [codes.NOTE_VALUE[note.note].value for note in head.notes]
        probabilities = {
            name_of(i): float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"
        }
        for item in head.stage_probabilities:
            assert probabilities[codes.stage_probability_name(item.label).meaning] == pytest.approx(
                item.probability, 1e-5
            )
        region = next(i for i in items if i.ValueType == "SCOORD")
        corners = np.array(region.GraphicData, dtype=np.float32).reshape(-1, 2)
        assert corners[0].tolist() == pytest.approx([head.box.x0, head.box.y0], rel=1e-5)
        assert corners[2].tolist() == pytest.approx([head.box.x1, head.box.y1], rel=1e-5)
        image = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_the_private_coding_scheme_is_declared_in_the_sr(run_dir: Path, sources: dict[str, Path]) -> None:
    sr = read(diagnose(Pipeline(InProcessBackend.from_run(run_dir)), sources["CR"].read_bytes()).dicom_sr)
    declared = sr.CodingSchemeIdentificationSequence[0]
    assert (
        declared.CodingSchemeDesignator
        == codes.PRIVATE_SCHEME
        == coding_scheme_identification()[0].CodingSchemeDesignator
    )


def test_the_annotated_copy_is_the_overlay_marked_as_made_by_software(run_dir: Path, sources: dict[str, Path]) -> None:
    source = pydicom.dcmread(sources["DX"], stop_before_pixels=True)
    result = diagnose(Pipeline(InProcessBackend.from_run(run_dir)), sources["DX"].read_bytes(), include_overlay=True)
    annotated = read(result.dicom_annotated)
    assert annotated.BurnedInAnnotation == "YES"
    assert list(annotated.ImageType) == ["DERIVED", "SECONDARY"]
    assert "software" in annotated.DerivationDescription
    assert annotated.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    overlay = np.asarray(Image.open(io.BytesIO(result.overlay_png)).convert("RGB"))
    assert (annotated.Rows, annotated.Columns) == (source.Rows, source.Columns)
    assert np.array_equal(annotated.pixel_array, overlay)


def test_every_request_gets_new_instances_even_from_the_cache(run_dir: Path, sources: dict[str, Path]) -> None:
    pipeline = Pipeline(InProcessBackend.from_run(run_dir), LRUCache())
    first, second = (diagnose(pipeline, sources["CR"].read_bytes()) for _ in range(2))
    assert second.cache_hit
    assert read(first.dicom_sr).SOPInstanceUID != read(second.dicom_sr).SOPInstanceUID
    assert read(first.dicom_annotated).SOPInstanceUID != read(second.dicom_annotated).SOPInstanceUID


def test_dicom_outputs_of_a_png_are_refused_before_any_model_runs(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="need a DICOM radiograph"):
        diagnose(Pipeline(InProcessBackend({})), phantom_png(tmp_path).read_bytes())


# ---------------------------------------------------------------- on every transport


@pytest.fixture(scope="module")
def rest(run_dir: Path, api_key: ApiKey) -> Iterator[TestClient]:
    app = create_app(Pipeline(InProcessBackend.from_run(run_dir)), Settings(case_bank=None, api_keys_file=api_key.file))
    with TestClient(app, headers=api_key.headers) as client:
        yield client


def test_rest_answers_multipart_related_dicom_on_accept(
    rest: TestClient, sources: dict[str, Path], tmp_path: Path
) -> None:
    response = rest.post(
        "/v1/diagnose",
        content=sources["CR"].read_bytes(),
        headers={"content-type": "application/dicom", "accept": 'multipart/related; type="application/dicom"'},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    parts = multipart_parts(response.headers["content-type"], response.content)
    assert [content_type for content_type, _ in parts] == ["application/dicom"] * 2
    sr, annotated = (read(data) for _, data in parts)
    assert (sr.SOPClassUID, annotated.SOPClassUID) == (SR_CLASS, SC_CLASS)
    assert all(dciodvfy_errors(data, tmp_path) == [] for _, data in parts)


def test_rest_json_carries_the_outputs_as_base64_on_include_dicom(rest: TestClient, sources: dict[str, Path]) -> None:
    response = rest.post("/v1/diagnose?include_dicom=true", content=sources["DX"].read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert read(base64.b64decode(body["dicom_sr"])).SOPClassUID == SR_CLASS
    assert read(base64.b64decode(body["dicom_annotated"])).SOPClassUID == SC_CLASS
    plain = rest.post("/v1/diagnose", content=sources["DX"].read_bytes()).json()
    assert plain["dicom_sr"] is None and plain["dicom_annotated"] is None


def test_rest_refuses_dicom_outputs_of_a_png_with_400(rest: TestClient, tmp_path: Path) -> None:
    response = rest.post(
        "/v1/diagnose",
        content=phantom_png(tmp_path).read_bytes(),
        headers={"accept": 'multipart/related; type="application/dicom"'},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "InvalidArgument"


def test_grpc_returns_the_outputs_on_include_dicom(
    run_dir: Path, sources: dict[str, Path], tmp_path: Path, api_key: ApiKey
) -> None:
    stubs = load()
    with (
        BackgroundGrpcServer(
            Pipeline(InProcessBackend.from_run(run_dir)), authenticator=api_key.authenticator()
        ) as server,
        keyed_channel(server.target, api_key.key, [("grpc.max_receive_message_length", 64 << 20)]) as channel,
    ):
        request = stubs.messages.DiagnoseRequest(
            image=sources["CR"].read_bytes(), options=stubs.messages.DiagnoseOptions(include_dicom=True)
        )
        answer = stubs.services.DiagnosisStub(channel).Diagnose(request, timeout=60)
    assert read(answer.dicom_sr).SOPClassUID == SR_CLASS
    assert dciodvfy_errors(answer.dicom_annotated, tmp_path) == []


def test_avn_diagnose_writes_the_outputs_with_dicom_out(
    run_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    png = phantom_png(tmp_path)  # no DICOM outputs for it, and no failure either
    out, dicom_out = tmp_path / "out", tmp_path / "dicom"
    result = CliRunner().invoke(
        app,
        [
            "diagnose",
            str(sources["CR"]),
            str(png),
            "--models",
            str(run_dir),
            "--out",
            str(out),
            "--dicom-out",
            str(dicom_out),
        ],
    )
    assert result.exit_code == 0, result.output
    name = sources["CR"].stem
    assert sorted(p.name for p in dicom_out.iterdir()) == [f"{name}.annotated.dcm", f"{name}.sr.dcm"]
    for path in dicom_out.iterdir():
        assert dciodvfy_errors(path.read_bytes(), tmp_path) == []
    assert "dicom_sr" not in (out / f"{name}.json").read_text().replace('"dicom_sr": null', "")


# ---------------------------------------------------------------- reading SR content and multipart bodies


def measurement_groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    measurements = next(item for item in sr.ContentSequence if name_of(item) == "Imaging Measurements")
    return list(measurements.ContentSequence)


def flatten(item: pydicom.Dataset) -> list[pydicom.Dataset]:
    found = []
    for child in item.get("ContentSequence", []):
        found += [child, *flatten(child)]
    return found


def name_of(item: pydicom.Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


def coded(items: list[pydicom.Dataset], name: str) -> str:
    return next(i.ConceptCodeSequence[0].CodeValue for i in items if i.ValueType == "CODE" and name_of(i) == name)


def multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return [(part.get_content_type(), part.get_payload(decode=True)) for part in message.iter_parts()]
