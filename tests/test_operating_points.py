"""Operating points (issue #12, deliverable 5): thresholds on P(AVN presence) chosen on validation,
stored in the staging model card, selectable per request (REST, gRPC, ``avn diagnose``) and per node
(``AVN_OPERATING_POINT``), reported in every output with their validation figures. The tiny untrained
models of tests/gateway_support.py are given hand-made points (thresholds 0 and above 1 make every
head present or absent, whatever the random model says)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from gateway_support import ApiKey, keyed_channel, phantom_dicom, write_tiny_run

from avn.evaluation.operating_point_store import store_operating_points
from avn.integration import codes
from avn.integration.fhir import fhir_bundle
from avn.models.classifier import build_classifier
from avn.operating_points import (
    ChosenPoint,
    OperatingPointError,
    choose_operating_points,
    evaluation_section,
    presence_probability,
    sensitivity_specificity,
    served_stage_indices,
)
from avn.pipeline.errors import InvalidArgument
from avn.pipeline.pipeline import Pipeline
from avn.pipeline.results import DiagnoseOptions, DiagnoseRequest, Diagnosis, ImagePayload
from avn.serving.inprocess import InProcessBackend
from avn.training.classifier_loop import predict
from avn.training.runner import staging_operating_points
from avn.vocabulary import STAGES, presence_of
from gateway.grpc_server import BackgroundGrpcServer
from gateway.proto import load
from gateway.rest import create_app
from gateway.settings import Settings

# Hand-made points: "sensitive" calls every head present, "specific" none.
POINTS = {
    "default": ChosenPoint(0.5, 0.9, 0.8, "test"),
    "sensitive": ChosenPoint(0.0, 1.0, 0.0, "test"),
    "specific": ChosenPoint(1.5, 0.0, 1.0, "test"),
}


# ---------------------------------------------------------------- choosing


def test_the_points_meet_their_targets_and_are_the_best_such_thresholds() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(400) < 0.4
    scores = np.clip(np.where(truth, 0.65, 0.35) + rng.normal(0, 0.18, 400), 0, 1)
    points = choose_operating_points(truth, scores)
    sensitive, specific, default = points["sensitive"], points["specific"], points["default"]
    assert sensitive.sensitivity >= 0.95 and specific.specificity >= 0.95
    assert (sensitive.sensitivity, sensitive.specificity) == sensitivity_specificity(truth, scores, sensitive.threshold)
    # The sensitive point is the most specific of those reaching the target, and symmetrically.
    above = scores[scores > sensitive.threshold]
    assert above.size == 0 or sensitivity_specificity(truth, scores, above.min())[0] < 0.95
    below = scores[scores < specific.threshold]
    assert below.size == 0 or sensitivity_specificity(truth, scores, below.max())[1] < 0.95
    assert specific.threshold >= default.threshold >= sensitive.threshold
    youden = default.sensitivity + default.specificity - 1
    assert all(youden >= sum(sensitivity_specificity(truth, scores, t)) - 1 - 1e-12 for t in np.unique(scores))


def test_a_validation_fold_of_one_class_defines_no_point() -> None:
    with pytest.raises(OperatingPointError, match="need both"):
        choose_operating_points(np.ones(5, bool), np.linspace(0, 1, 5))


def test_the_served_stage_agrees_with_the_presence_call_at_every_threshold() -> None:
    probabilities = np.random.default_rng(1).dirichlet(np.ones(len(STAGES)), 200)
    assert np.array_equal(served_stage_indices(probabilities), probabilities.argmax(axis=1))
    for threshold in (0.0, 0.3, 0.5, 0.8, 1.01):
        stages = served_stage_indices(probabilities, threshold)
        present = presence_probability(probabilities) >= threshold
        assert [presence_of(STAGES[s]) == "presence" for s in stages] == present.tolist()
        # Within the class called, the most probable stage.
        for row, stage in zip(probabilities, stages, strict=True):
            same_class = [i for i in range(len(STAGES)) if presence_of(STAGES[i]) == presence_of(STAGES[stage])]
            assert row[stage] == row[same_class].max()


def test_training_chooses_the_staging_points_on_the_validation_crops() -> None:
    model = build_classifier("staging")
    crops = np.random.default_rng(2).random((40, 64, 64)).astype(np.float32)
    labels = np.array([0, 1, 2, 3] * 10)
    val = SimpleNamespace(crops=crops, labels=lambda task: labels)
    points = staging_operating_points(model, val, SimpleNamespace(logger=None))
    expected = choose_operating_points(labels > 0, presence_probability(predict(model, crops)))
    assert points == {name: point.to_dict() for name, point in expected.items()}


def test_the_evaluation_scores_each_point_on_the_evaluated_heads() -> None:
    probabilities = np.array([[0.9, 0.1, 0, 0], [0.4, 0.6, 0, 0], [0.2, 0.2, 0.3, 0.3], [0.7, 0.1, 0.1, 0.1]])
    truth = np.array([0, 1, 3, 1])
    card = {name: point.to_dict() for name, point in POINTS.items()}
    rows = {row["name"]: row for row in evaluation_section(truth, probabilities, card)["rows"]}
    assert (rows["sensitive"]["sensitivity"], rows["sensitive"]["specificity"]) == (1.0, 0.0)
    assert (rows["specific"]["sensitivity"], rows["specific"]["specificity"]) == (0.0, 1.0)
    # default (0.5): presence 0.1, 0.6, 0.8, 0.3 → called at heads 1 and 2; head 3 (AVN) missed
    assert rows["default"]["sensitivity"] == pytest.approx(2 / 3) and rows["default"]["specificity"] == 1.0
    assert rows["argmax"]["threshold"] is None and (rows["argmax"]["positives"], rows["argmax"]["negatives"]) == (3, 1)


# ---------------------------------------------------------------- serving


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = write_tiny_run(tmp_path_factory.mktemp("points") / "run")
    store_operating_points(run / "staging" / "model.pt", POINTS)
    return run


@pytest.fixture(scope="module")
def dicom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phantom_dicom(tmp_path_factory.mktemp("dicom"), 0)


def diagnose(pipeline: Pipeline, path: Path, **options) -> Diagnosis:
    request = DiagnoseRequest(ImagePayload(path.read_bytes()), DiagnoseOptions(**options))
    return asyncio.run(pipeline.diagnose(request))


@pytest.mark.parametrize(("name", "presence"), [("sensitive", "presence"), ("specific", "absence")])
def test_a_request_chooses_its_point_and_the_result_reports_it(
    run_dir: Path, dicom_file: Path, name: str, presence: str
) -> None:
    result = diagnose(Pipeline(InProcessBackend.from_run(run_dir)), dicom_file, operating_point=name)
    assert {head.presence for head in result.heads} == {presence}
    assert all(presence_of(head.stage) == head.presence for head in result.heads)
    point = POINTS[name]
    assert (result.operating_point.name, result.operating_point.threshold) == (name, point.threshold)
    assert result.operating_point.validation_sensitivity == point.sensitivity
    assert result.operating_point.validation_specificity == point.specificity


def test_the_node_default_applies_when_the_request_names_none(run_dir: Path, dicom_file: Path) -> None:
    backend = InProcessBackend.from_run(run_dir)
    assert diagnose(Pipeline(backend), dicom_file).operating_point.name == "default"
    node = Pipeline(backend, operating_point="specific")
    assert diagnose(node, dicom_file).operating_point.name == "specific"
    assert diagnose(node, dicom_file, operating_point="sensitive").operating_point.name == "sensitive"


def test_a_card_without_points_serves_the_argmax_and_refuses_a_named_point(tmp_path: Path, dicom_file: Path) -> None:
    pipeline = Pipeline(InProcessBackend.from_run(write_tiny_run(tmp_path / "run")))
    result = diagnose(pipeline, dicom_file)
    assert result.operating_point.name == "argmax" and result.operating_point.threshold is None
    with pytest.raises(InvalidArgument, match="'sensitive' is not in the staging model's card"):
        diagnose(pipeline, dicom_file, operating_point="sensitive")
    with pytest.raises(InvalidArgument, match="operating_point 'lenient' is not one of"):
        diagnose(pipeline, dicom_file, operating_point="lenient")


def test_the_node_setting_is_checked_at_start_up() -> None:
    assert Settings(operating_point="specific", case_bank=None).operating_point == "specific"
    assert Settings(operating_point="", case_bank=None).operating_point is None
    with pytest.raises(ValueError, match="not one of"):
        Settings(operating_point="lenient", case_bank=None)


def test_rest_and_grpc_select_and_report_the_point(run_dir: Path, dicom_file: Path, api_key: ApiKey) -> None:
    app = create_app(Pipeline(InProcessBackend.from_run(run_dir)), Settings(case_bank=None, api_keys_file=api_key.file))
    with TestClient(app, headers=api_key.headers) as client:
        body = client.post("/v1/diagnose?operating_point=specific", content=dicom_file.read_bytes()).json()
        assert body["operating_point"] == {
            "name": "specific",
            "threshold": 1.5,
            "validation_sensitivity": 0.0,
            "validation_specificity": 1.0,
        }
        assert {head["presence"] for head in body["heads"]} == {"absence"}
        refused = client.post("/v1/diagnose?operating_point=lenient", content=dicom_file.read_bytes())
        assert refused.status_code == 400
    stubs = load()
    with (
        BackgroundGrpcServer(
            Pipeline(InProcessBackend.from_run(run_dir)), authenticator=api_key.authenticator()
        ) as server,
        keyed_channel(server.target, api_key.key) as channel,
    ):
        stub = stubs.services.DiagnosisStub(channel)
        options = stubs.messages.DiagnoseOptions(operating_point="sensitive")
        answer = stub.Diagnose(stubs.messages.DiagnoseRequest(image=dicom_file.read_bytes(), options=options))
        models = stub.ListModels(stubs.messages.ListModelsRequest())
    assert answer.operating_point.name == "sensitive" and answer.operating_point.threshold == 0.0
    assert {head.presence for head in answer.heads} == {"presence"}
    staging = next(model for model in models.models if model.name == "staging")
    assert [point.name for point in staging.operating_points] == ["default", "sensitive", "specific"]


def test_the_sr_and_fhir_carry_the_point_with_its_validation_figures(run_dir: Path, dicom_file: Path) -> None:
    pipeline = Pipeline(InProcessBackend.from_run(run_dir))
    result = diagnose(pipeline, dicom_file, operating_point="sensitive", include_dicom=True)
    sr = pydicom.dcmread(io.BytesIO(result.dicom_sr))
    text = str(sr)
    assert codes.operating_point_value("sensitive").value in text
    assert codes.VALIDATION_SENSITIVITY.value in text and codes.VALIDATION_SPECIFICITY.value in text
    observation = fhir_bundle(result)["entry"][1]["resource"]
    by_code = {c["code"]["coding"][0]["code"]: c for c in observation["component"]}
    assert by_code[codes.OPERATING_POINT_NAME.value]["valueCodeableConcept"]["coding"][0]["code"] == "OP-SENSITIVE"
    assert by_code[codes.VALIDATION_SENSITIVITY.value]["valueQuantity"]["value"] == 1.0
    assert by_code[codes.THRESHOLD_NAME.value]["valueQuantity"]["value"] == 0.0
