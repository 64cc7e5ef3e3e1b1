"""FHIR R4 (issue #12, deliverable 4): the diagnosis as a Bundle with a DiagnosticReport and one
Observation per femoral head, validated with ``fhir.resources`` (its R4B models: Bundle,
DiagnosticReport, Observation and Device did not change from R4 to R4B), from the pipeline, over
REST (``Accept: application/fhir+json``) and from ``avn diagnose --fhir``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from gateway_support import ApiKey, phantom_dicom, phantom_png, write_tiny_run
from typer.testing import CliRunner

from avn.cli import app
from avn.integration import codes
from avn.integration.fhir import FHIR_JSON, fhir_bundle
from avn.pipeline.pipeline import Pipeline
from avn.pipeline.results import DiagnoseOptions, DiagnoseRequest, Diagnosis, ImagePayload
from avn.serving.inprocess import InProcessBackend
from gateway.rest import create_app
from gateway.settings import Settings


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("fhir") / "run")


@pytest.fixture(scope="module")
def dicom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phantom_dicom(tmp_path_factory.mktemp("dicom"), 0)


def diagnose(run_dir: Path, data: bytes) -> Diagnosis:
    pipeline = Pipeline(InProcessBackend.from_run(run_dir))
    return asyncio.run(pipeline.diagnose(DiagnoseRequest(ImagePayload(data), DiagnoseOptions(note_threshold=0.0))))


def validated(document: dict) -> tuple[DiagnosticReport, list[Observation], dict]:
    """The bundle through fhir.resources' validation; its report, observations, and resources by fullUrl."""
    bundle = Bundle.model_validate(document)
    by_url = {entry.fullUrl: entry.resource for entry in bundle.entry}
    (report,) = [r for r in by_url.values() if r.get_resource_type() == "DiagnosticReport"]
    observations = [by_url[reference.reference] for reference in report.result]
    assert all(o.get_resource_type() == "Observation" for o in observations)
    return report, observations, by_url


def component(observation: Observation, code: str):
    return next(c for c in observation.component if c.code.coding[0].code == code)


def test_a_dicom_diagnosis_is_a_valid_bundle_with_an_observation_per_head(run_dir: Path, dicom_file: Path) -> None:
    result = diagnose(run_dir, dicom_file.read_bytes())
    report, observations, by_url = validated(fhir_bundle(result))
    study_uid = pydicom.dcmread(dicom_file, stop_before_pixels=True).StudyInstanceUID
    assert report.status == "preliminary"
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{study_uid}"
    assert len(observations) == len(result.heads)
    for head, observation in zip(result.heads, observations, strict=True):
        assert observation.code.coding[0].code == codes.FINDING.value
        assert observation.valueCodeableConcept.coding[0].code == codes.PRESENCE_VALUE[head.presence].value
        assert observation.bodySite.coding[0].code == f"2812003:272741003={codes.LATERALITY[head.side].value}"
        laterality = component(observation, codes.LATERALITY_ATTRIBUTE.value).valueCodeableConcept.coding[0]
        assert (laterality.system, laterality.code) == ("http://snomed.info/sct", codes.LATERALITY[head.side].value)
        stage = component(observation, codes.STAGE_NAME.value).valueCodeableConcept.coding[0].code
        assert stage == codes.STAGE_VALUE[head.stage].value
        presence = component(observation, codes.PRESENCE_PROBABILITY.value).valueQuantity
        assert float(presence.value) == pytest.approx(head.presence_probability, 1e-5) and presence.code == "1"
        assert [n.text for n in observation.note][0].startswith("Notes: sclerosis")  # threshold 0: all pass
        assert observation.derivedFrom[0].identifier.value == f"urn:oid:{study_uid}"
        device = by_url[observation.device.reference]
        assert {v.value for v in device.version} >= {result.software_version, *(m.version for m in result.models)}


def test_a_png_diagnosis_is_a_valid_bundle_without_an_imaging_study(run_dir: Path, tmp_path: Path) -> None:
    report, observations, _ = validated(fhir_bundle(diagnose(run_dir, phantom_png(tmp_path).read_bytes())))
    assert report.imagingStudy is None and all(o.derivedFrom is None for o in observations)


# ---------------------------------------------------------------- REST and the command line


@pytest.fixture(scope="module")
def rest(run_dir: Path, api_key: ApiKey) -> Iterator[TestClient]:
    app = create_app(Pipeline(InProcessBackend.from_run(run_dir)), Settings(case_bank=None, api_keys_file=api_key.file))
    with TestClient(app, headers=api_key.headers) as client:
        yield client


def test_rest_answers_fhir_json_on_accept(rest: TestClient, dicom_file: Path) -> None:
    response = rest.post("/v1/diagnose", content=dicom_file.read_bytes(), headers={"accept": FHIR_JSON})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    report, observations, _ = validated(response.json())
    assert report.identifier[0].value == response.headers["x-request-id"]
    assert observations


def test_rest_keeps_answering_json_to_clients_that_ask_for_anything(rest: TestClient, dicom_file: Path) -> None:
    for accept in ("*/*", "application/json", ""):
        response = rest.post("/v1/diagnose", content=dicom_file.read_bytes(), headers={"accept": accept})
        assert response.headers["content-type"] == "application/json" and "heads" in response.json()


def test_avn_diagnose_writes_the_bundle_with_fhir(run_dir: Path, dicom_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["diagnose", str(dicom_file), "--models", str(run_dir), "--out", str(out), "--fhir"]
    )
    assert result.exit_code == 0, result.output
    validated(json.loads((out / f"{dicom_file.stem}.fhir.json").read_text()))
