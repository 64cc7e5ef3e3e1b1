"""Provenance (issue #12, deliverable 1): a result about a DICOM radiograph names the radiograph by its
Study, Series and SOP Instance UIDs, and every result names the models and the software that made
it — from the pipeline, over REST, over gRPC and in ``avn diagnose``'s JSON. The in-process backend
over tiny untrained models (tests/gateway_support.py) stands in for TorchServe."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from gateway_support import ApiKey, keyed_channel, phantom_dicom, phantom_png, write_tiny_run
from typer.testing import CliRunner

from avn import __version__
from avn.cli import app
from avn.dataset.images import DicomSource
from avn.pipeline.backend import MODELS
from avn.pipeline.pipeline import Pipeline
from avn.pipeline.results import DiagnoseRequest, ImagePayload
from avn.serving.inprocess import InProcessBackend
from gateway.cache import LRUCache
from gateway.grpc_server import BackgroundGrpcServer
from gateway.proto import load
from gateway.rest import create_app
from gateway.settings import Settings


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("provenance") / "run")


@pytest.fixture(scope="module")
def dicom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phantom_dicom(tmp_path_factory.mktemp("dicom"), 0)


def uids_of(path: Path) -> DicomSource:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return DicomSource(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)


def diagnose(pipeline: Pipeline, data: bytes):
    return asyncio.run(pipeline.diagnose(DiagnoseRequest(ImagePayload(data))))


def test_a_dicom_result_carries_the_source_uids_the_models_and_the_software(run_dir: Path, dicom_file: Path) -> None:
    result = diagnose(Pipeline(InProcessBackend.from_run(run_dir)), dicom_file.read_bytes())
    assert result.source == uids_of(dicom_file)
    assert all(result.source.__dict__.values())
    assert [model.name for model in result.models] == list(MODELS)
    assert all(model.version for model in result.models)
    assert result.software_version == __version__


def test_a_png_result_has_no_source(run_dir: Path, tmp_path: Path) -> None:
    result = diagnose(Pipeline(InProcessBackend.from_run(run_dir)), phantom_png(tmp_path).read_bytes())
    assert result.source is None and result.software_version == __version__


def test_a_cache_hit_reports_the_uids_of_the_file_sent_not_of_the_cached_one(run_dir: Path, dicom_file: Path) -> None:
    # Same pixels, another instance (a re-sent copy gets a new SOP Instance UID): the cache answers,
    # the UIDs must be this file's.
    copy = pydicom.dcmread(dicom_file)
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    copy_path = dicom_file.with_name("copy.dcm")
    copy.save_as(copy_path)
    pipeline = Pipeline(InProcessBackend.from_run(run_dir), LRUCache())
    first, second = diagnose(pipeline, dicom_file.read_bytes()), diagnose(pipeline, copy_path.read_bytes())
    assert second.cache_hit and not first.cache_hit
    assert second.source == uids_of(copy_path) != first.source


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_malformed_uid_reads_as_empty_and_the_image_is_still_diagnosed(run_dir: Path, dicom_file: Path) -> None:
    broken = pydicom.dcmread(dicom_file)
    broken.StudyInstanceUID = "not a uid"
    path = dicom_file.with_name("broken-uid.dcm")
    broken.save_as(path)
    result = diagnose(Pipeline(InProcessBackend.from_run(run_dir)), path.read_bytes())
    assert result.source.study_instance_uid == "" and result.source.sop_instance_uid == uids_of(path).sop_instance_uid


# ---------------------------------------------------------------- on every transport


@pytest.fixture(scope="module")
def rest(run_dir: Path, api_key: ApiKey) -> Iterator[TestClient]:
    app = create_app(Pipeline(InProcessBackend.from_run(run_dir)), Settings(case_bank=None, api_keys_file=api_key.file))
    with TestClient(app, headers=api_key.headers) as client:
        yield client


def test_rest_answers_carry_the_uids_and_the_software_version(rest: TestClient, dicom_file: Path) -> None:
    response = rest.post("/v1/diagnose", content=dicom_file.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == uids_of(dicom_file).__dict__
    assert body["software_version"] == __version__
    assert [model["name"] for model in body["models"]] == list(MODELS)
    study = rest.post("/v1/studies", files=[("file", ("a.dcm", dicom_file.read_bytes(), "application/dicom"))])
    assert study.status_code == 200, study.text
    assert study.json()["software_version"] == __version__
    assert study.json()["radiographs"][0]["result"]["source"] == uids_of(dicom_file).__dict__


def test_grpc_answers_carry_the_uids_and_the_software_version(run_dir: Path, dicom_file: Path, api_key: ApiKey) -> None:
    stubs = load()
    with (
        BackgroundGrpcServer(
            Pipeline(InProcessBackend.from_run(run_dir)), authenticator=api_key.authenticator()
        ) as server,
        keyed_channel(server.target, api_key.key) as channel,
    ):
        answer = stubs.services.DiagnosisStub(channel).Diagnose(
            stubs.messages.DiagnoseRequest(image=dicom_file.read_bytes()), timeout=60
        )
    expected = uids_of(dicom_file)
    assert answer.source.study_instance_uid == expected.study_instance_uid
    assert answer.source.sop_instance_uid == expected.sop_instance_uid
    assert answer.software_version == __version__


def test_avn_diagnose_json_carries_the_uids(run_dir: Path, dicom_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["diagnose", str(dicom_file), "--models", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads((out / f"{dicom_file.stem}.json").read_text())
    assert document["source"] == uids_of(dicom_file).__dict__
    assert document["software_version"] == __version__
