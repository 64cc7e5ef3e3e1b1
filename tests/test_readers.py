"""Reader studies: metrics against hand-computed values and scikit-learn, kappa against a textbook
example, p-value sanity, CSV errors with line and column, and `avn readers --simulate` end to end."""

import json
import re

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, recall_score
from typer.testing import CliRunner

from avn.cli import app
from avn.evaluation.readers import ReadSet, compare_paired, kappa_table, load_study, rater_metrics, reading_time
from avn.evaluation.simulate_readers import SimulatedReader, confuse, parse_readers, simulate_study
from avn.readers_format import READER_COLUMNS, ReaderFormatError, ReaderRow, write_rows

RESAMPLES = 400


def read_set(truth, predicted, rater="R1", mode="no", seconds=None):
    heads = tuple((f"case{i // 2}", ("left", "right")[i % 2]) for i in range(len(truth)))
    return ReadSet(rater, mode, heads, np.asarray(truth), np.asarray(predicted), seconds or {})


# Six heads: stages absence, absence, II, III, IV, IV read as absence, II, II, III, IV, III.
HAND_TRUTH = [0, 0, 1, 2, 3, 3]
HAND_READ = [0, 1, 1, 2, 3, 2]


def test_reader_metrics_match_a_hand_computed_case():
    metrics = rater_metrics(read_set(HAND_TRUTH, HAND_READ), RESAMPLES, seed=0)
    # Staging: every stage has one TP and one FP or FN → F1 = 2/3 each, macro 2/3.
    assert metrics["staging"]["f1"]["estimate"] == pytest.approx(2 / 3)
    # Presence (II–IV): truth 0 0 1 1 1 1, read 0 1 1 1 1 1 → TP 4, FP 1, FN 0.
    assert metrics["presence"]["f1"]["estimate"] == pytest.approx(8 / 9)
    assert metrics["presence"]["per_class"]["presence"]["sensitivity"]["estimate"] == pytest.approx(1.0)
    assert metrics["presence"]["per_class"]["presence"]["specificity"]["estimate"] == pytest.approx(0.5)
    # Collapse: truth absence, absence, pre, post, post, post; read absence, pre, pre, post ×3.
    assert metrics["collapse"]["f1"]["estimate"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # Stage IV one vs rest: 1 of 2 found, no false alarm among 4.
    stage_iv = metrics["staging"]["per_class"]["IV"]
    assert stage_iv["sensitivity"]["estimate"] == pytest.approx(0.5)
    assert stage_iv["specificity"]["estimate"] == pytest.approx(1.0)


def test_reader_metrics_agree_with_scikit_learn_on_a_random_reader():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, 120)
    read = np.array([confuse(int(t), 0.7, rng) for t in truth])
    metrics = rater_metrics(read_set(truth, read), RESAMPLES, seed=1)
    assert metrics["staging"]["f1"]["estimate"] == pytest.approx(f1_score(truth, read, average="macro"))
    presence_truth, presence_read = truth > 0, read > 0
    assert metrics["presence"]["f1"]["estimate"] == pytest.approx(f1_score(presence_truth, presence_read))
    collapse = np.array([0, 1, 2, 2])
    assert metrics["collapse"]["f1"]["estimate"] == pytest.approx(
        f1_score(collapse[truth], collapse[read], average="macro")
    )
    for stage_index, stage in enumerate(("absence", "II", "III", "IV")):
        entry = metrics["staging"]["per_class"][stage]
        assert entry["sensitivity"]["estimate"] == pytest.approx(
            recall_score(truth == stage_index, read == stage_index)
        )
        assert entry["specificity"]["estimate"] == pytest.approx(
            recall_score(truth != stage_index, read != stage_index)
        )
        low, high = entry["sensitivity"]["low"], entry["sensitivity"]["high"]
        assert low <= entry["sensitivity"]["estimate"] <= high


def test_bootstrap_intervals_are_reproducible_with_their_seed():
    reads = read_set(HAND_TRUTH * 10, HAND_READ * 10)
    assert rater_metrics(reads, RESAMPLES, seed=5) == rater_metrics(reads, RESAMPLES, seed=5)
    assert rater_metrics(reads, RESAMPLES, seed=5) != rater_metrics(reads, RESAMPLES, seed=6)


def test_cohen_kappa_matches_the_textbook_example():
    # The classic 2 × 2 example: 50 items, both yes 20, A yes / B no 5, A no / B yes 10, both no 15:
    # p_o = 0.7, p_e = 0.5 · 0.6 + 0.5 · 0.4 = 0.5, κ = (0.7 − 0.5) / (1 − 0.5) = 0.4.
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    first, second = read_set(a, a, rater="A"), read_set(a, b, rater="B")
    table = kappa_table([first, second], dict(zip(first.heads, a, strict=True)))
    pair = next(p for p in table["pairs"] if {p["a"], p["b"]} == {"A", "B"})
    assert pair["kappa"] == pytest.approx(0.4)
    assert pair["kappa"] == pytest.approx(cohen_kappa_score(a, b))
    truth_pair = next(p for p in table["pairs"] if {p["a"], p["b"]} == {"GT", "A"})
    assert truth_pair["kappa"] == pytest.approx(1.0) and truth_pair["heads"] == 50


def test_p_values_identical_raters_are_not_different_and_a_far_better_model_is():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 200)
    reader = np.array([confuse(int(t), 0.5, rng) for t in truth])
    same = compare_paired(read_set(truth, reader, rater="model"), read_set(truth, reader), RESAMPLES, seed=0)
    assert all(same[task]["p_value"] == pytest.approx(1.0) for task in same)
    assert same["staging"]["difference"] == 0
    better = compare_paired(read_set(truth, truth, rater="model"), read_set(truth, reader), RESAMPLES, seed=0)
    assert better["staging"]["p_value"] < 0.01 and better["staging"]["difference"] > 0.3
    assert better["staging"]["low"] > 0


def test_reading_time_counts_each_radiograph_once():
    reads = read_set([0, 0, 1, 1], [0, 0, 1, 1], seconds={"case0": 30.0, "case1": 10.0})
    assert reading_time(reads) == {"radiographs": 2, "mean": 20.0, "median": 20.0, "sd": pytest.approx(14.1421356)}


def test_csv_errors_name_line_and_column(tmp_path):
    (tmp_path / "truth.csv").write_text("case_id,side,stage\nc1,left,II\nc1,right,absence\n")
    (tmp_path / "reader.csv").write_text(
        "reader,case_id,side,stage,seconds,assisted\nR1,c1,left,II,12,no\nR1,c1,right,V,12,no\nR1,c1,right,II,-3,maybe\n"
    )
    with pytest.raises(ReaderFormatError) as error:
        load_study(tmp_path / "truth.csv", [tmp_path / "reader.csv"])
    message = str(error.value)
    assert "reader.csv: line 3, column stage" in message
    assert "line 4, column seconds" in message and "line 4, column assisted" in message
    (tmp_path / "reader.csv").write_text(
        "reader,case_id,side,stage,seconds,assisted\nR1,c1,left,II,12,no\nR1,c9,left,II,,no\n"
    )
    with pytest.raises(ReaderFormatError, match=r"reader.csv: 1 head\(s\) not in the truth file .*line 3: c9/left"):
        load_study(tmp_path / "truth.csv", [tmp_path / "reader.csv"])
    (tmp_path / "reader.csv").write_text("reader,case_id,side,stage,seconds,assisted\nR1,c1,left,II,12,no\n")
    (tmp_path / "model.csv").write_text("case_id,side,stage,p_absence,p_II,p_III,p_IV\nc1,right,II,0.1,0.7,0.1,0.1\n")
    with pytest.raises(ReaderFormatError, match="no answer for 1 head"):
        load_study(tmp_path / "truth.csv", [tmp_path / "reader.csv"], tmp_path / "model.csv")


def test_with_and_without_the_system_are_paired_when_the_same_heads_were_read(tmp_path):
    heads = {"E1": [("c1", "left", "II"), ("c1", "right", "IV"), ("c2", "left", "absence"), ("c2", "right", "III")]}
    heads["E2"] = heads["E1"]  # the web app's second-opinion mode: first and final read of the same cases
    study = simulate_study(heads, [SimulatedReader("R1", 0.7)], tmp_path, seed=1)
    from avn.evaluation.readers import analyse

    document = analyse(load_study(study.truth, study.readers, study.model), resamples=RESAMPLES)
    assert document["assistance"][0]["paired"] is True
    assert document["assistance"][0]["with_minus_without"]["staging"]["method"].startswith("paired")


def test_parse_readers_validates_skills_and_names():
    assert [r.name for r in parse_readers("R1", "0.6,0.9")] == ["R1", "reader2"]
    with pytest.raises(ValueError):
        parse_readers("R1", "1.5")
    with pytest.raises(ValueError):
        parse_readers("A,A", "0.5,0.6")


def test_simulate_then_analyse_end_to_end(tmp_path):
    result = CliRunner().invoke(
        app, ["readers", "--simulate", "--out", str(tmp_path), "--bootstrap", "200", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    for name in (
        "truth.csv",
        "model.csv",
        "reader_R1.csv",
        "reader_S2.csv",
        "report.html",
        "report.json",
        "confusion_matrices.png",
        "reading_time.png",
        "roc.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    document = json.loads((tmp_path / "report.json").read_text())
    assert set(document) >= {
        "settings",
        "p_value_methods",
        "readers",
        "modes",
        "heads",
        "read_sets",
        "model",
        "reader_vs_model",
        "assistance",
        "kappa",
        "confusion_matrices",
        "reading_time",
        "paper",
    }
    assert document["readers"] == ["R1", "R2", "S1", "S2"] and document["modes"] == ["no", "yes"]
    assert document["heads"]["read"] == 260  # Table I: E1 200 heads, E2 60
    assert len(document["read_sets"]) == 8 and len(document["reader_vs_model"]) == 8
    assert len(document["confusion_matrices"]) == 10  # 4 readers × 2 modes + the model per mode
    assert {p["a"] for p in document["kappa"]["no"]["pairs"]} >= {"GT", "R1"}
    times = {(t["reader"], t["mode"]): t["mean"] for t in document["reading_time"]}
    assert all(times[(r, "yes")] < times[(r, "no")] for r in document["readers"])  # assisted reads are faster
    html = (tmp_path / "report.html").read_text()
    for caption in (
        "Table VII",
        "Table VIII",
        "Table X",
        "Readers without the system",
        "Readers with the system",
        "sensitivity and specificity",
        "paper, real radiographs",
        "confusion matrices",
        "reading time per radiograph",
    ):
        assert caption in html, caption
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 3
    assert "http" not in html.replace("http-equiv", "")  # self-contained: no external resources


def test_written_reader_csv_reads_back(tmp_path):
    rows = [ReaderRow(reader="R1", case_id="c1", side="left", stage="II", seconds=None, assisted="yes")]
    write_rows(tmp_path / "r.csv", rows, READER_COLUMNS)
    assert (tmp_path / "r.csv").read_text() == "reader,case_id,side,stage,seconds,assisted\nR1,c1,left,II,,yes\n"


def test_a_study_without_a_model_file_still_reports(tmp_path):
    heads = {
        "E1": [("c1", "left", "II"), ("c1", "right", "IV"), ("c2", "left", "absence")],
        "E2": [("c3", "right", "III")],
    }
    study = simulate_study(heads, [SimulatedReader("A", 0.7), SimulatedReader("B", 0.9)], tmp_path / "sim", seed=3)
    from avn.evaluation.readers import analyse
    from avn.evaluation.readers_report import write_report

    loaded = load_study(study.truth, study.readers)
    document = analyse(loaded, resamples=RESAMPLES)
    assert document["model"] == {} and document["reader_vs_model"] == []
    assert [p["a"] for p in document["kappa"]["no"]["pairs"]][:2] == ["GT", "GT"]
    files = write_report(document, loaded, tmp_path / "out")
    assert "roc" not in files and files["html"].read_text().count("<table") >= 5
