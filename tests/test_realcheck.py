"""The real-radiograph check set and `avn realcheck`.

The set itself (tests/data/real, docs/real-data.md) is checked here: every file decodes through
the service's own decoder, every annotated box lies on its image, every file is small and has a
source and a licence. The verdict rules are checked on hand-made answers, and the command runs
end to end on a store of untrained models (CI has no trained store): it must report every file,
and an untrained detector, which proposes boxes everywhere, must fail the negative controls.
"""

import json
from pathlib import Path

import pytest
from gateway_support import write_tiny_store
from typer.testing import CliRunner

from avn.cli import app
from avn.dataset.images import read_radiograph
from avn.dataset.real import REAL_TRAINING_SET, ManifestError, load_manifest
from avn.evaluation.realcheck import judge_error, judge_heads
from avn.metrics import MATCH_IOU as PASS_IOU

CHECK_SET = Path(__file__).parent / "data" / "real"
MAX_FILE_BYTES = 1_000_000


def test_the_check_set_is_well_formed_small_and_attributed():
    manifest = load_manifest(CHECK_SET)
    kinds = [entry.kind for entry in manifest.files]
    assert kinds.count("negative") >= 2 and len(kinds) - kinds.count("negative") >= 2
    for entry in manifest.files:
        path = CHECK_SET / entry.file
        assert path.stat().st_size < MAX_FILE_BYTES, entry.file
        assert entry.source and entry.licence and entry.attribution
        radiograph = read_radiograph(path)
        assert min(radiograph.width, radiograph.height) >= 400, entry.file
        for head in entry.heads:
            x0, y0, x1, y1 = head.box
            assert 0 <= x0 < x1 <= radiograph.width and 0 <= y0 < y1 <= radiograph.height, entry.file
            side = max(x1 - x0, y1 - y0)
            assert (
                0.05 * max(radiograph.width, radiograph.height) < side < 0.3 * max(radiograph.width, radiograph.height)
            )
    documented = (Path(__file__).parents[1] / "docs" / "real-data.md").read_text()
    assert all(entry.file in documented for entry in manifest.files)


def test_a_broken_manifest_is_refused_with_the_reason(tmp_path: Path):
    with pytest.raises(ManifestError, match="cannot be read"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"files": [{"file": "x.png", "kind": "hip"}]}))
    with pytest.raises(ManifestError, match="description"):
        load_manifest(tmp_path)
    entry = json.loads((CHECK_SET / "manifest.json").read_text())["files"][0]
    (tmp_path / "manifest.json").write_text(json.dumps({"files": [entry]}))
    with pytest.raises(ManifestError, match="listed but missing"):
        load_manifest(tmp_path)
    (tmp_path / entry["file"]).write_bytes((CHECK_SET / entry["file"]).read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps({"files": [{**entry, "heads": []}]}))
    with pytest.raises(ManifestError, match="a hip or pelvis has some"):
        load_manifest(tmp_path)


def test_verdicts_hips_need_every_head_found_negatives_need_no_stage():
    manifest = load_manifest(CHECK_SET)
    hip = next(entry for entry in manifest.files if len(entry.heads) == 2)
    negative = next(entry for entry in manifest.files if entry.is_negative)
    truth = [list(head.box) for head in hip.heads]
    found = [{"box": box, "score": 0.9, "side": "left", "stage": "absence", "low_confidence": False} for box in truth]
    assert judge_heads(hip, found).passed and judge_heads(hip, found).best_iou == [1.0, 1.0]
    one_missed = judge_heads(hip, found[:1])
    assert not one_missed.passed and "IoU" in one_missed.message
    x0, y0, x1, y1 = truth[0]
    shifted = [{**found[0], "box": [x0 + 0.6 * (x1 - x0), y0, x1 + 0.6 * (x1 - x0), y1]}, found[1]]
    assert judge_heads(hip, shifted).best_iou[0] < PASS_IOU and not judge_heads(hip, shifted).passed
    assert not judge_error(hip, "NoFemoralHead", "no femoral head").passed
    assert judge_error(negative, "NoFemoralHead", "no femoral head").passed
    assert not judge_error(negative, "InvalidImage", "garbage").passed
    assert not judge_heads(negative, found[:1]).passed


def test_realcheck_runs_the_served_models_on_every_file(tmp_path: Path):
    store = write_tiny_store(tmp_path)
    out = tmp_path / "outcomes.json"
    result = CliRunner().invoke(app, ["realcheck", "--store", str(store), "--data", str(CHECK_SET), "--json", str(out)])
    assert result.exit_code == 0, result.output
    outcomes = json.loads(out.read_text())
    manifest = load_manifest(CHECK_SET)
    assert [o["file"] for o in outcomes] == [entry.file for entry in manifest.files]
    assert "files pass" in result.output
    # the chest CR's header names its body part: refused before any model runs, which passes
    chest = next(o for o in outcomes if o["file"] == "wg04_rg1_chest_cr.dcm")
    assert chest["answer"] == "NoFemoralHead" and "not a pelvic radiograph" in chest["message"] and chest["passed"]
    # the chest PNGs carry no header: an untrained detector proposes boxes everywhere, they get a stage and fail
    pngs = [o for o in outcomes if o["kind"] == "negative" and o["file"].endswith(".png")]
    assert pngs and all(o["answer"] == "heads" and not o["passed"] for o in pngs)
    strict = CliRunner().invoke(app, ["realcheck", "--store", str(store), "--data", str(CHECK_SET), "--strict"])
    assert strict.exit_code == 1


def test_realcheck_runs_on_the_held_out_split_of_the_real_training_set(tmp_path: Path):
    store = write_tiny_store(tmp_path)
    out = tmp_path / "outcomes.json"
    args = ["realcheck", "--store", str(store), "--data", str(REAL_TRAINING_SET), "--split", "validation"]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    held_out = [entry for entry in load_manifest(REAL_TRAINING_SET).files if entry.split == "validation"]
    outcomes = json.loads(out.read_text())
    assert [o["file"] for o in outcomes] == [entry.file for entry in held_out]
    annotated = sum(len(entry.heads) for entry in held_out)
    found = sum(sum(iou > 0.5 for iou in o["best_iou"]) for o in outcomes)
    assert f"{found} of {annotated} annotated heads found" in _words(result.output)
    unknown = CliRunner().invoke(app, [*args[:-1], "holdout"])
    assert unknown.exit_code == 2 and "no file of split 'holdout'" in _words(unknown.output)


def _words(output: str) -> str:
    """Command output without rich's box drawing and line wrapping."""
    return " ".join(output.replace("│", " ").split())


def test_realcheck_refuses_a_missing_store_or_manifest(tmp_path: Path):
    missing_store = CliRunner().invoke(app, ["realcheck", "--store", str(tmp_path / "nope")])
    assert missing_store.exit_code == 2 and "is not a folder" in _words(missing_store.output)
    (tmp_path / "store").mkdir()
    no_manifest = CliRunner().invoke(app, ["realcheck", "--store", str(tmp_path / "store"), "--data", str(tmp_path)])
    assert no_manifest.exit_code == 2 and "cannot be read" in _words(no_manifest.output)
