"""``avn evaluate`` / ``avn calibrate``: the report end to end on a tiny phantom and a tiny store, the
pieces against hand-computed cases (head matching, detection counts, subject level, repeated-CV
intervals, deciles), and temperature fitting on a run's rebuilt validation fold.

The tiny store's models are untrained, so an "oracle" detector (the truth boxes, looked up by the
radiograph's pixels) stands in for the SSD in the end-to-end report: the four classifiers, the crop,
the fusion and every table still run through the serving code. The untrained detector itself is
checked to produce a clear error, not a report of nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gateway_support import TINY_INPUT, VERSION, write_tiny_run
from sklearn.metrics import f1_score, recall_score
from typer.testing import CliRunner

from avn.cli import app
from avn.dataset.format import load_dataset
from avn.dataset.images import read_radiograph
from avn.evaluation.cli import HEADLINE_KEYS, headline
from avn.evaluation.collect import RadiographResult, match_heads
from avn.evaluation.evaluate import EvaluationRequest, evaluate
from avn.evaluation.operating_point_store import run_operating_points, store_operating_points
from avn.evaluation.report import REPORT_HTML, REPORT_JSON, write_report
from avn.evaluation.run_info import RunInfoError, deployed_validation_subjects, interval_over_folds
from avn.evaluation.tables import (
    DiagnosisArrays,
    Intervals,
    IntervalSettings,
    detection_counts,
    served_multiclass,
    subject_answers,
    uncertainty_deciles,
)
from avn.evaluation.temperature import calibrate_run
from avn.letterbox import shrink_to_letterbox
from avn.metrics import detection_prf
from avn.models.checkpoint import read_card
from avn.models.classifier import CLASSIFIER_TASKS
from avn.operating_points import OPERATING_POINTS, OperatingPointError, choose_operating_points
from avn.phantom.build import PhantomOptions, build_phantom
from avn.pipeline.backend import Detections
from avn.pipeline.fuse import served_stage
from avn.pipeline.results import Box, DiagnoseOptions, Diagnosis, FemoralHead, LabelProbability, StepTimings, View
from avn.serving.inprocess import InProcessBackend
from avn.store import build_store
from avn.training.folds import subject_folds
from avn.training.runner import dataset_fingerprint
from avn.vocabulary import STAGES

pytestmark = pytest.mark.slow
SUBJECTS, SEED = 8, 3
RESAMPLES = 1_000
REPORT_KEYS = {
    "title",
    "generated",
    "command",
    "data",
    "models",
    "intervals",
    "tables",
    "subject_level",
    "confusion",
    "calibration",
    "operating_points",
    "uncertainty",
    "figures",
    "timing",
    "paper_note",
}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("phantom") / "data"
    build_phantom(PhantomOptions(subjects=SUBJECTS, seed=SEED, image_format="png", scale=0.2), folder, workers=2)
    return folder


def write_run_metrics(run: Path, data: Path, val_heads: int | None = None) -> None:
    """The parts of ``avn train``'s metrics.json evaluation reads: quick profile, one deployed fold."""
    dataset = load_dataset(data)
    fold = subject_folds(dataset.splits["train"], 10, 1, 0)[0]
    heads = sum(
        1
        for a in dataset.annotations
        if next(i for i in dataset.images if i.id == a.image_id).subject_id in fold.val_subjects
    )
    for task in CLASSIFIER_TASKS:
        doc = {
            "task": task,
            "profile": "quick",
            "seed": 0,
            "version": VERSION,
            "input_size": TINY_INPUT,
            "training_data_hash": dataset_fingerprint(data),
            "deployed_fold": "r0f0",
            "folds": [{"fold": "r0f0", "val_heads": heads if val_heads is None else val_heads, "test": {}}],
        }
        (run / task / "metrics.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def run_and_store(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    run = write_tiny_run(root / "run")
    write_run_metrics(run, phantom)
    build_store(run, root / "model_store")
    return run, root / "model_store"


class OracleDetector(InProcessBackend):
    """The stored models, except that detection answers the truth boxes of the radiograph, in the
    coordinates of the image it is sent: whole, or shrunk to the detector's input (the pipeline's
    ``detect_heads`` sends a large radiograph shrunk)."""

    def __init__(self, backend: InProcessBackend, data: Path) -> None:
        super().__init__({name: loaded for name, loaded in backend._models.items()}, source=backend.source)
        dataset = load_dataset(data)
        input_size = backend._models["detection"].card.input_size
        self.truth: dict[str, np.ndarray] = {}
        for image in dataset.images:
            pixels = read_radiograph(data / image.file_name).pixels
            boxes = np.array([a.xyxy for a in dataset.annotations_of(image.id)], dtype=np.float32).reshape(-1, 4)
            shrunk, geometry = shrink_to_letterbox(pixels, input_size)
            self.truth[_digest(pixels)] = boxes
            self.truth[_digest(shrunk)] = boxes * geometry.box_factors()

    async def detect(self, image: np.ndarray) -> Detections:
        boxes = self.truth[_digest(image)]
        return Detections(boxes, np.linspace(0.9, 0.8, len(boxes)).astype(np.float32))


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def report(phantom: Path, run_and_store: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, store = run_and_store
    request = EvaluationRequest(data_dir=phantom, split="train", store=store, run=run, resamples=RESAMPLES, seed=5)
    document, figures = evaluate(request, backend=OracleDetector(InProcessBackend.from_store(store), phantom))
    out = tmp_path_factory.mktemp("report")
    write_report(document, figures, out)
    return out


# ---------------------------------------------------------------- the report end to end


def test_report_json_has_every_key_and_is_strict_json(report: Path) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-JSON constant {constant}")

    document = json.loads((report / REPORT_JSON).read_text(), parse_constant=refuse)
    assert set(document) == REPORT_KEYS
    assert set(document["tables"]) == {"table_ii", "table_iii", "table_iv", "table_v"}
    keys = {row["key"] for table in document["tables"].values() for row in table["rows"]}
    for key in (
        "detection.detector.f1@0.5",
        "detection.pipeline.recall@0.7",
        "view.auc",
        "side.sensitivity",
        "notes.fused.auc",
        "notes.raw.specificity",
        "presence.auc",
        "presence.f1",
        "subject.AP+FL.sensitivity",
        "subject.AP.sensitivity",
        "subject.FL.sensitivity",
        "collapse.pre-collapse.sensitivity",
        "collapse.post-collapse.auc",
        "staging.IV.auc",
        "staging.II.f1",
        "staging.macro_f1",
    ):
        assert key in keys, key
    for table in document["tables"].values():
        for row in table["rows"]:
            assert {"estimate", "low", "high", "ci_method", "paper", "n"} <= set(row)
    assert document["intervals"] == {**document["intervals"], "method": "bootstrap", "resamples": RESAMPLES, "seed": 5}
    assert document["data"]["matched_heads"] == document["data"]["truth_heads"] > 0  # the oracle finds every head
    assert document["tables"]["table_ii"]["rows"][2]["estimate"] == 1.0  # oracle: F1 = 1 at IoU 0.5
    assert set(document["confusion"]) == {"presence", "collapse", "staging"}
    assert [row["task"] for row in document["calibration"]["rows"]] == list(CLASSIFIER_TASKS)
    assert len(document["uncertainty"]["correct_percent"]) == 10


def test_temperatures_are_fitted_on_the_runs_validation_fold(report: Path) -> None:
    calibration = json.loads((report / REPORT_JSON).read_text())["calibration"]
    for row in calibration["rows"]:
        assert row["temperature"] > 0 and "validation fold r0f0" in row["temperature_source"]
        # Not "lower on this split": an untrained model's temperature, fitted on one validation subject,
        # need not transfer (tests/test_calibration.py checks the lowering on an over-confident model).
        assert row["ece_after"] is not None and row["nll_after"] is not None and row["validation_heads"] > 0
        assert calibration["reliability"][row["task"]]["after"] is not None


def test_report_html_holds_every_table_the_papers_column_and_embedded_figures(report: Path) -> None:
    page = (report / REPORT_HTML).read_text()
    document = json.loads((report / REPORT_JSON).read_text())
    for table in document["tables"].values():
        assert table["title"] in page
    for title in (document["calibration"]["title"], document["uncertainty"]["title"]):
        assert title in page.replace("&#x27;", "'")
    assert page.count("paper, real radiographs") >= 5
    assert page.count("data:image/png;base64,") == len(document["figures"]) == 4
    assert document["data"]["fingerprint"] in page and "seed 5" in page and f"{RESAMPLES} resamples" in page
    for figure in document["figures"]:
        png = (report / figure["file"]).read_bytes()
        assert png.startswith(b"\x89PNG") and figure["caption"]


def test_an_untrained_detector_gives_a_clear_error_not_an_empty_report(
    phantom: Path, run_and_store, tmp_path: Path
) -> None:
    _, store = run_and_store
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(phantom),
            "--store",
            str(store),
            "--split",
            "test",
            "--out",
            str(tmp_path / "out"),
            "--resamples",
            "100",
        ],
    )
    assert result.exit_code == 2
    assert "matched none of the" in result.output and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- temperature fitting on a run


def test_calibrate_run_fits_on_the_validation_fold_and_stores_the_temperature(
    phantom: Path, run_and_store, tmp_path: Path
) -> None:
    run = shutil.copytree(run_and_store[0], tmp_path / "run")
    results = calibrate_run(run, phantom)
    for task in CLASSIFIER_TASKS:
        card = read_card(run / task / "model.pt")
        assert card.temperature == pytest.approx(results[task]["temperature"])
        assert card.version == f"{VERSION}-t{card.temperature:.4f}"
        assert results[task]["fold"] == "r0f0" and results[task]["nll_after"] <= results[task]["nll_before"]
    assert read_card(run / "detection" / "model.pt").temperature == 1.0


def test_the_report_evaluates_every_operating_point_of_the_staging_card_on_the_split(report: Path) -> None:
    section = json.loads((report / REPORT_JSON).read_text())["operating_points"]
    # The tiny run's card has no operating points: the argmax alone, scored on the matched heads.
    (row,) = section["rows"]
    assert row["name"] == "argmax" and row["threshold"] is None
    matched = json.loads((report / REPORT_JSON).read_text())["data"]["matched_heads"]
    assert row["positives"] + row["negatives"] == matched
    assert "Operating points on AVN presence" in (report / "report.html").read_text()


def test_operating_points_refuse_a_validation_fold_without_both_classes(phantom: Path, run_and_store) -> None:
    # This small phantom's deployed validation fold holds AVN heads only: no specificity to choose by.
    with pytest.raises(OperatingPointError, match="operating points need both"):
        run_operating_points(run_and_store[0], phantom, write=False)


def test_operating_points_stored_in_the_card_get_a_version_and_are_served(run_and_store, tmp_path: Path) -> None:
    run = shutil.copytree(run_and_store[0], tmp_path / "run")
    truth = np.array([True] * 30 + [False] * 30)
    scores = np.concatenate([np.linspace(0.3, 1.0, 30), np.linspace(0.0, 0.7, 30)])
    points = choose_operating_points(truth, scores)
    version = store_operating_points(run / "staging" / "model.pt", points)
    card = read_card(run / "staging" / "model.pt")
    assert card.operating_points == {name: point.to_dict() for name, point in points.items()}
    assert re.fullmatch(rf"{re.escape(VERSION)}-op[0-9a-f]{{6}}", card.version) and card.version == version
    assert store_operating_points(run / "staging" / "model.pt", points) == version  # the same points, the same version
    served = asyncio.run(InProcessBackend.from_run(run).models())
    staging = next(model for model in served if model.name == "staging")
    assert [point.name for point in staging.operating_points] == list(OPERATING_POINTS)
    assert staging.operating_points[1].threshold == pytest.approx(points["sensitive"].threshold)


def test_a_validation_fold_that_does_not_match_the_record_is_refused(phantom: Path, tmp_path: Path) -> None:
    run = write_tiny_run(tmp_path / "run")
    write_run_metrics(run, phantom, val_heads=999)
    doc = json.loads((run / "view" / "metrics.json").read_text())
    with pytest.raises(RunInfoError, match="cannot rebuild"):
        deployed_validation_subjects(doc, load_dataset(phantom))


# ---------------------------------------------------------------- pieces against hand-computed cases


def head(side: str, stage: str, box: tuple[float, float, float, float] = (0, 0, 10, 10)) -> FemoralHead:
    probabilities = tuple(LabelProbability(s, 1.0 if s == stage else 0.0) for s in STAGES)
    return FemoralHead(
        box=Box(*box),
        score=0.9,
        side=side,
        side_probability=0.9,
        side_corrected=False,
        stage_probabilities=probabilities,
        stage=stage,
        stage_probability=1.0,
        presence="",
        presence_probability=1.0,
        collapse="",
        collapse_probability=1.0,
        notes=(),
        cam_png=b"",
        cam_stage=stage,
        cam_box=Box(*box),
        view_probabilities=(),
    )


def radiograph(subject: str, view: str, heads: list[FemoralHead] | None) -> RadiographResult:
    image = type("Image", (), {"subject_id": subject, "view": view, "id": 0})()
    diagnosis = (
        None
        if heads is None
        else Diagnosis(
            request_id="",
            width=100,
            height=100,
            view=View(view, 1.0, ()),
            heads=tuple(heads),
            overlay_png=None,
            models=(),
            cache_hit=False,
            timings=StepTimings(),
            note_threshold=DiagnoseOptions().note_threshold or 0.5,
        )
    )
    return RadiographResult(image, [], Detections(np.zeros((0, 4)), np.zeros(0)), diagnosis)


def test_subject_level_uses_the_most_severe_stage_over_the_chosen_views() -> None:
    # S1: diseased; AP sees absence, FL sees III → found with AP+FL and FL, missed with AP only.
    # S2: diseased; AP sees II, no FL radiograph → not in the FL-only population.
    # S3: diseased; no head found on its only AP radiograph → missed.
    # S4: healthy, AP says absence.
    results = [
        radiograph("S1", "AP", [head("left", "absence")]),
        radiograph("S1", "FL", [head("left", "III")]),
        radiograph("S2", "AP", [head("right", "II")]),
        radiograph("S3", "AP", None),
        radiograph("S4", "AP", [head("left", "absence")]),
    ]
    truth = {"S1": ["absence", "III"], "S2": ["II"], "S3": ["IV"], "S4": ["absence"]}
    for views, expected_truth, expected_predicted in (
        (("AP", "FL"), [1, 1, 1, 0], [1, 1, 0, 0]),
        (("AP",), [1, 1, 1, 0], [0, 1, 0, 0]),
        (("FL",), [1], [1]),
    ):
        t, p = subject_answers(results, truth, views)
        assert t.tolist() == expected_truth and p.tolist() == expected_predicted, views


def test_heads_match_one_to_one_above_iou_one_half_largest_overlap_first() -> None:
    truth = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=float)
    predicted = [
        head("left", "II", (1, 0, 11, 10)),
        head("right", "II", (0, 0, 10, 9)),
        head("right", "II", (40, 0, 50, 10)),
    ]
    # Both first predictions overlap truth 0; the larger overlap (IoU 0.9) wins, the other stays unmatched.
    assert match_heads(truth, predicted) == [(0, 1)]
    assert match_heads(truth, [head("left", "II", (5, 0, 15, 10))]) == []  # IoU 1/3


def test_detection_counts_pool_to_the_metrics_core() -> None:
    truths = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float), np.array([[0, 0, 10, 10]], float)]
    predictions = [
        (np.array([[0, 0, 10, 10], [0, 0, 10, 10], [21, 0, 31, 10]], float), np.array([0.9, 0.8, 0.7])),
        (np.zeros((0, 4)), np.zeros(0)),
    ]
    for threshold in (0.5, 0.7):
        counts = np.sum(
            [detection_counts(b, s, t, threshold) for (b, s), t in zip(predictions, truths, strict=True)], axis=0
        )
        pooled = detection_prf(predictions, truths, (threshold,), score_threshold=0.0)[threshold]
        assert tuple(counts) == (pooled["tp"], pooled["fp"], pooled["fn"])
    assert tuple(
        np.sum([detection_counts(b, s, t, 0.7) for (b, s), t in zip(predictions, truths, strict=True)], axis=0)
    ) == (
        2,
        1,
        1,
    )


def test_served_operating_point_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 60)
    probs = rng.dirichlet(np.ones(4), 60)
    served = probs.argmax(axis=1)
    metrics = served_multiclass(truth, probs, served, STAGES)
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, served, average="macro"))
    for k, stage in enumerate(STAGES):
        assert metrics["per_class"][stage]["sensitivity"] == pytest.approx(recall_score(truth == k, served == k))


def test_intervals_over_cv_repeats_are_the_t_interval_of_the_fold_mean() -> None:
    summary = interval_over_folds([0.90, 0.92, 0.94, None])
    # mean 0.92, SD 0.02, n 3: half width t(0.975, 2) · 0.02 / √3 = 4.3027 · 0.011547
    assert summary["mean"] == pytest.approx(0.92) and summary["n"] == 3
    assert summary["high"] - summary["mean"] == pytest.approx(4.302653 * 0.02 / np.sqrt(3), rel=1e-5)
    docs = {
        "view": {"folds": [{"fold": f"r{r}f0", "test": {"auc": value}} for r, value in enumerate([0.9, 0.92, 0.94])]}
    }
    intervals = Intervals(IntervalSettings(resamples=100, seed=0, fold_docs=docs))
    chosen = intervals.choose("view", lambda test: test["auc"], lambda: {"method": "bootstrap"})
    assert chosen["method"] == "repeats" and chosen["low"] == pytest.approx(summary["low"]) and chosen["folds"] == 3
    assert intervals.choose("side", lambda test: test["auc"], lambda: {"method": "bootstrap"})["method"] == "bootstrap"


def test_uncertainty_deciles_on_a_hand_computed_case() -> None:
    table = type("Heads", (), {})()
    table.stage_probs = np.array([[0.95, 0.05, 0.0, 0.0], [0.55, 0.45, 0.0, 0.0]])
    table.stage_truth = np.array([0, 1])
    section = uncertainty_deciles(table)
    # Head 1 right: its 4 one-vs-rest answers are correct (0.95, 0.05, 0, 0). Head 2 wrong: absence
    # (0.55) and II (0.45) incorrect, III and IV (0, 0) correct.
    assert section["correct_count"] == 6 and section["incorrect_count"] == 2
    assert section["correct_percent"][0] == pytest.approx(100 * 5 / 6) and section["correct_percent"][
        9
    ] == pytest.approx(100 / 6)
    assert section["incorrect_percent"][4] == 50.0 and section["incorrect_percent"][5] == 50.0


def test_the_readme_headline_table_has_every_headline_figure_beside_the_papers(report: Path) -> None:
    document = json.loads((report / REPORT_JSON).read_text())
    table = headline(document).splitlines()
    assert table[0].startswith("| figure | ours (phantom) | 95% CI | paper (real radiographs)")
    assert len(table) == 2 + len(HEADLINE_KEYS) + len(CLASSIFIER_TASKS)
    assert "| detector: F1 @ IoU 0.5 | 1.0000 | 1.0000–1.0000 | 0.9908 | — |" in table


def test_the_tables_score_the_stage_the_pipeline_serves() -> None:
    # Ties included: the served rule picks the earlier stage, and the tables must score that answer.
    rng = np.random.default_rng(2)
    probs = np.vstack([rng.dirichlet(np.ones(len(STAGES)), size=20), [[0.4, 0.4, 0.1, 0.1], [0.1, 0.3, 0.3, 0.3]]])
    table = DiagnosisArrays.of(SimpleNamespace(stage_truth=np.zeros(len(probs), dtype=int), stage_probs=probs))
    served = [served_stage(dict(zip(STAGES, row.tolist(), strict=True))) for row in probs]
    assert [STAGES[i] for i in table.stage_served] == served
    assert served[-2:] == ["absence", "II"]
