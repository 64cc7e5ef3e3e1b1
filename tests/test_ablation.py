"""The staging ablation: fixed regions, the crop-source option, the analysis and a tiny run end to end."""

import json
from dataclasses import replace

import numpy as np
import pytest

from avn.dataset.format import FemoralHeadAnnotation, ImageRecord, load_dataset
from avn.evaluation.ablation import (
    FIXED_REGION_SIDE,
    NO_DETECTION,
    AblationOptions,
    Variant,
    ablation_variants,
    analyse,
    fixed_region_box,
    run_ablation,
    variant_epochs,
)
from avn.phantom.build import PhantomOptions, build_phantom
from avn.training.head_data import annotated_box, build_crops, serving_scale
from avn.training.profiles import QUICK

TINY = replace(
    QUICK,
    input_size=32,
    resamples=2,
    folds=3,
    fold_limit=1,
    batch_size=16,
    epochs={**QUICK.epochs, "view": 1, "staging": 1},
)


def image(width=1000, height=800):
    return ImageRecord(
        id=1, file_name="x.png", width=width, height=height, subject_id="S1", view="AP", pixel_spacing=(0.2, 0.2)
    )


def head(side):
    return FemoralHeadAnnotation(id=1, image_id=1, bbox=(10, 10, 50, 50), side=side, stage="II")


def test_fixed_regions_ignore_the_head_box_and_sit_on_the_sides_image_half():
    right, left = fixed_region_box(image(), head("right")), fixed_region_box(image(), head("left"))
    # The patient's right hip is on the image's left half, and the box does not follow the annotation.
    assert (right[0] + right[2]) / 2 < 500 < (left[0] + left[2]) / 2
    for x0, y0, x1, y1 in (right, left):
        assert x1 - x0 == pytest.approx(y1 - y0) == pytest.approx(FIXED_REGION_SIDE * 800)


def test_variants_always_include_the_reference_and_budgets_scale_epochs():
    names = [v.name for v in ablation_variants(QUICK, (2, 5), include_no_detection=True)]
    assert names == [NO_DETECTION, "N=2", "N=3", "N=5"]  # N=3 is the quick profile's reference
    options = AblationOptions(data=None, out=None, profile=QUICK, epochs=3, budget="equal-steps")
    assert variant_epochs(options, Variant("N=2", False, 2)) == 4  # round(3 · 3 / 2) = round(4.5) → 4
    assert variant_epochs(options, Variant("N=20", False, 20)) == 1  # never below one epoch
    assert variant_epochs(replace(options, budget="equal-epochs"), Variant("N=20", False, 20)) == 3


def fake_result(name, truth, predicted, resamples=3, fixed=False):
    probabilities = np.eye(4)[predicted] * 0.7 + 0.075
    return {
        "variant": name,
        "fixed_regions": fixed,
        "resamples": resamples,
        "epochs": 1,
        "test_annotation_ids": list(range(len(truth))),
        "test_truth": list(truth),
        "test_probabilities": probabilities.tolist(),
    }


def test_analysis_gives_p_1_for_identical_variants_and_small_p_for_a_far_better_one():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 150)
    noisy = np.where(rng.random(150) < 0.5, truth, rng.integers(0, 4, 150))
    results = {
        NO_DETECTION: fake_result(NO_DETECTION, truth, noisy, fixed=True),
        "N=2": fake_result("N=2", truth, noisy, resamples=2),
        "N=3": fake_result("N=3", truth, truth),
    }
    # The reference's heads in another order must be aligned by annotation id, not position.
    order = rng.permutation(150)
    results["N=3"]["test_annotation_ids"] = [results["N=3"]["test_annotation_ids"][i] for i in order]
    results["N=3"]["test_truth"] = [int(truth[i]) for i in order]
    results["N=3"]["test_probabilities"] = [results["N=3"]["test_probabilities"][i] for i in order]
    document = analyse(results, QUICK, resamples=500, seed=0)
    variants = document["variants"]
    assert variants["N=3"]["macro_f1"]["estimate"] == pytest.approx(1.0)
    assert variants["N=2"]["vs_no_detection"]["p_value"] == pytest.approx(1.0)
    assert variants["N=3"]["vs_no_detection"]["p_value"] < 0.01
    assert variants["N=2"]["vs_reference"]["p_value"] < 0.01 and variants["N=3"]["vs_reference"] is None
    assert document["paper"]["N=5"]["f1"] == 0.8369


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ablation_phantom")
    build_phantom(PhantomOptions(subjects=6, seed=2, scale=0.12, image_format="png"), folder, workers=2)
    return folder


def test_crop_source_option_leaves_the_default_unchanged(tiny_data):
    dataset = load_dataset(tiny_data)
    subjects = dataset.splits["train"][:2]
    default = build_crops(tiny_data, dataset, subjects, 24, serving_scale)
    explicit = build_crops(tiny_data, dataset, subjects, 24, serving_scale, box_of=annotated_box)
    fixed = build_crops(tiny_data, dataset, subjects, 24, serving_scale, box_of=fixed_region_box)
    assert np.array_equal(default.crops, explicit.crops)
    assert fixed.crops.shape == default.crops.shape and not np.array_equal(default.crops, fixed.crops)


def test_tiny_ablation_runs_end_to_end_and_resumes(tiny_data, tmp_path):
    options = AblationOptions(data=tiny_data, out=tmp_path, profile=TINY, resample_counts=(2,), bootstrap_resamples=200)
    document = run_ablation(options)
    assert list(document["variants"]) == [NO_DETECTION, "N=2"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved) >= {"reference", "test_heads", "p_value_method", "variants", "paper", "settings", "seconds"}
    for row in saved["variants"].values():
        assert set(row) >= {"macro_f1", "per_stage_f1", "vs_no_detection", "vs_reference"}
        assert 0.0 <= row["macro_f1"]["estimate"] <= 1.0
    html = (tmp_path / "report.html").read_text()
    assert "Table VI" in html and "real radiographs" in html and 'src="data:image/png;base64,' in html
    assert (tmp_path / "table.md").read_text().startswith("| variant |")
    # A rerun reloads every finished variant instead of training it again.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("variants/*/result.json")}
    again = run_ablation(replace(options, timings={}))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["variants"] == document["variants"]
