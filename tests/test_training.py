"""Training: focal loss, label-aware flips, subject folds, staging init, resume, tiny end-to-end runs."""

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from avn.dataset.real import MANIFEST, REAL_TRAINING_SET, load_manifest, manifest_fingerprint
from avn.models.acceleration import AUC_TOLERANCE
from avn.models.checkpoint import TASKS, load_checkpoint
from avn.models.classifier import CLASSIFIER_TASKS
from avn.models.detector import FH_CLASS, PROSTHESIS_CLASS
from avn.optimisation import Optimisation
from avn.phantom.build import PhantomOptions, build_phantom
from avn.store import build_store
from avn.timing_store import archive_card
from avn.training.augment import augment_crop, flip_labels
from avn.training.classifier_loop import fit_classifier
from avn.training.detection_loop import REAL_SUBJECT_PREFIX, SOURCE_SCALE, build_real_detection_set
from avn.training.folds import subject_folds
from avn.training.head_data import build_crops, serving_scale, training_scales
from avn.training.losses import FocalLoss, inverse_frequency_alpha
from avn.training.profiles import QUICK, get_profile
from avn.training.runner import TrainingError, prepare_context, train
from avn.vocabulary import SIDES

TINY = replace(
    QUICK,
    input_size=48,
    resamples=2,
    folds=3,
    fold_limit=1,
    batch_size=8,
    detector_batch_size=4,
    epochs={"detection": 1, "view": 1, "side": 1, "staging": 1, "notes": 1},
)


def test_focal_loss_matches_a_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([0, 1])
    alpha = torch.tensor([0.25, 0.75])
    # p_t = softmax: sample 0 → e²/(e²+1) = 0.880797; sample 1 → 0.5.
    p0 = math.exp(2) / (math.exp(2) + 1)
    expected = (-0.25 * (1 - p0) ** 2 * math.log(p0) + -0.75 * 0.5**2 * math.log(0.5)) / 2
    assert FocalLoss(alpha, gamma=2.0)(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # γ = 0 and α = 1 is plain cross-entropy.
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert FocalLoss(None, gamma=0.0)(logits, target).item() == pytest.approx(ce.item(), rel=1e-6)


def test_inverse_frequency_alpha_weighs_rare_classes_more():
    alpha = inverse_frequency_alpha([0, 0, 0, 1, 2, 2], classes=4)
    assert alpha[1] > alpha[2] > alpha[0]
    assert alpha.mean().item() == pytest.approx(1.0)


def test_horizontal_flip_mirrors_the_crop_and_swaps_the_side_label():
    crop = np.zeros((32, 32), np.float32)
    crop[:, :8] = 1.0  # bright on the left
    rng = np.random.default_rng(0)
    outcomes = [augment_crop(crop, rng) for _ in range(40)]
    flipped = [out for out, was in outcomes if was]
    kept = [out for out, was in outcomes if not was]
    assert flipped and kept
    assert all(out[:, 24:].mean() > out[:, :8].mean() for out in flipped)
    assert all(out[:, :8].mean() > out[:, 24:].mean() for out in kept)
    labels = np.array([SIDES.index("left"), SIDES.index("right"), SIDES.index("left")])
    swapped = flip_labels("side", labels, np.array([True, True, False]))
    assert [SIDES[i] for i in swapped] == ["right", "left", "left"]
    assert (flip_labels("staging", labels, np.array([True, True, True])) == labels).all()


def test_folds_keep_subjects_apart_and_reshuffle_per_repeat():
    subjects = [f"S{i:03d}" for i in range(50)]
    folds = subject_folds(subjects, folds=10, repeats=2, seed=0)
    assert len(folds) == 20
    for fold in folds:
        assert not set(fold.train_subjects) & set(fold.val_subjects)
        assert len(fold.val_subjects) == 5 and len(fold.train_subjects) == 45
    first_repeat = [set(f.val_subjects) for f in folds[:10]]
    assert set().union(*first_repeat) == set(subjects)
    assert folds[0].val_subjects != folds[10].val_subjects
    assert len(subject_folds(subjects, folds=10, repeats=10, seed=0, limit=1)) == 10


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("fast")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_phantom")
    build_phantom(PhantomOptions(subjects=10, seed=4, scale=0.15, image_format="png"), folder, workers=2)
    return folder


@pytest.fixture(scope="module")
def tiny_crops(tiny_data):
    from avn.dataset.format import load_dataset

    dataset = load_dataset(tiny_data)
    subjects = sorted({image.subject_id for image in dataset.images})
    pool = build_crops(tiny_data, dataset, subjects, TINY.input_size, training_scales(TINY.resamples))
    held = build_crops(tiny_data, dataset, subjects, TINY.input_size, serving_scale)
    return pool, held


def test_crops_follow_n_and_2n_resampling(tiny_crops):
    pool, held = tiny_crops
    expected = sum(2 * TINY.resamples if head.typical else TINY.resamples for head in pool.heads)
    assert len(pool) == expected
    assert len(held) == len(held.heads)
    assert pool.crops.shape[1:] == (TINY.input_size, TINY.input_size)
    assert pool.labels("notes").shape == (len(pool), 8)


def test_staging_starts_from_the_view_models_weights(tiny_crops, tmp_path):
    pool, held = tiny_crops
    view = fit_classifier("view", pool, held, TINY, tmp_path / "view", seed=0)
    staging = fit_classifier(
        "staging", pool, held, TINY, tmp_path / "staging", seed=0, init_state=view.model.state_dict(), epochs=0
    )
    for key, value in view.model.state_dict().items():
        if not key.startswith("backbone.fc."):
            assert torch.equal(value, staging.model.state_dict()[key]), key
    assert staging.model.backbone.fc.out_features == 4


def test_training_is_deterministic_and_resumes_where_it_stopped(tiny_crops, tmp_path):
    pool, held = tiny_crops
    straight = fit_classifier("side", pool, held, TINY, tmp_path / "straight", seed=3, epochs=2)
    fit_classifier("side", pool, held, TINY, tmp_path / "resumed", seed=3, epochs=1)
    resumed = fit_classifier("side", pool, held, TINY, tmp_path / "resumed", seed=3, epochs=2)
    assert len(resumed.history) == 2
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history])
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(value.float(), resumed.model.state_dict()[key].float(), atol=1e-5), key


def test_tiny_run_writes_loadable_checkpoints_metrics_and_archives(tiny_data, tmp_path):
    context = prepare_context(tiny_data, tmp_path / "run", TINY, seed=0, folds=None, repeats=None)
    results = train(list(TASKS), context)
    for task in TASKS:
        model, card = load_checkpoint(tmp_path / "run" / task / "model.pt")
        assert card.task == task and card.version == results[task]["version"]
        assert card.training_data_hash == context.data_hash
        metrics = json.loads((tmp_path / "run" / task / "metrics.json").read_text())
        assert metrics["test"] and metrics["folds"][0]["fold"] == "r0f0"
    assert load_checkpoint(tmp_path / "run" / "view" / "model.pt")[1].input_size == TINY.input_size
    archives = build_store(tmp_path / "run", tmp_path / "store", optimisation=Optimisation(tiny_data))
    assert sorted(archives) == sorted(TASKS)
    assert all(path.stat().st_size > 0 for path in archives.values())
    # Each classifier is archived in a form checked on its deployed fold's validation crops.
    validation = json.loads((tmp_path / "run" / "view" / "metrics.json").read_text())["deployed_fold_subjects"]
    assert validation["validation"] and not set(validation["validation"]) & set(validation["train"])
    for task in CLASSIFIER_TASKS:
        record = archive_card(archives[task]).optimisation
        assert record["checked"] and record["validation_crops"] > 0
        assert record["forms"][record["form"]]["accepted"]
        assert record["forms"][record["form"]]["max_auc_loss"] <= AUC_TOLERANCE
        assert load_checkpoint(tmp_path / "run" / task / "model.pt")[1].optimisation == {}  # the run stays fp32
    detector = archive_card(archives["detection"]).optimisation  # checked on validation radiographs
    assert detector["checked"] and detector["validation_crops"] > 0
    assert "f1_at_iou_0.5" in detector["forms"]["fp32"]["auc"]
    assert detector["forms"][detector["form"]]["max_auc_loss"] <= AUC_TOLERANCE
    # A rerun finds every task finished and retrains nothing.
    again = train(list(TASKS), context)
    assert {t: r["version"] for t, r in again.items()} == {t: r["version"] for t, r in results.items()}


def test_staging_without_a_view_model_is_refused(tiny_data, tmp_path):
    context = prepare_context(tiny_data, tmp_path / "run", TINY, seed=0, folds=None, repeats=None)
    with pytest.raises(TrainingError, match="train 'view' first"):
        train(["staging"], context)


def test_a_data_set_that_fails_the_checker_is_refused(tiny_data, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    document = json.loads((broken / "annotations.json").read_text())
    document["annotations"][0]["stage"] = "V"
    (broken / "annotations.json").write_text(json.dumps(document))
    with pytest.raises(TrainingError, match="does not pass"):
        prepare_context(broken, tmp_path / "run", TINY, seed=0, folds=None, repeats=None)


def test_a_tied_validation_score_keeps_the_later_epoch():
    from avn.training.fold_state import FoldState

    model = torch.nn.Linear(2, 1)
    state = FoldState()
    for epoch, score in enumerate([0.5, 0.9, 0.8, 0.9]):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        state.record_epoch(model, loss=1.0, score=score, lr=1e-3)
    assert state.best_epoch == 3 and state.best_score == 0.9
    assert float(state.best_weights["weight"][0, 0]) == 3.0


def small_real_set(folder: Path) -> Path:
    """Three radiographs of the real training set: two trained on (one with a prosthesis), one held out."""
    files = json.loads((REAL_TRAINING_SET / MANIFEST).read_text())["files"]
    train_files = [f for f in files if f["split"] == "train"]
    chosen = [
        next(f for f in train_files if f["prostheses"]),
        next(f for f in train_files if not f["prostheses"]),
        next(f for f in files if f["split"] == "validation"),
    ]
    folder.mkdir(parents=True)
    for entry in chosen:
        shutil.copy(REAL_TRAINING_SET / entry["file"], folder / entry["file"])
    (folder / MANIFEST).write_text(json.dumps({"files": chosen}))
    return folder


def test_the_real_detection_set_holds_heads_and_prostheses_the_serving_way(tmp_path):
    folder = small_real_set(tmp_path / "real")
    data = build_real_detection_set(folder, input_size=320)
    trained = [entry for entry in load_manifest(folder).files if entry.split == "train"]
    assert len(data) == 2 and all(s.startswith(REAL_SUBJECT_PREFIX) for s in data.subject_ids)
    assert data.inputs.shape == (2, 320, 320)
    assert len(build_real_detection_set(folder, input_size=320, split="validation")) == 1
    for entry, labels, boxes, source, original in zip(
        trained, data.source_labels, data.source_boxes, data.sources, data.original_boxes, strict=True
    ):
        assert list(labels) == [FH_CLASS] * len(entry.heads) + [PROSTHESIS_CLASS] * len(entry.prostheses)
        assert max(source.shape) == SOURCE_SCALE * 320
        assert np.all(boxes[:, 2] <= source.shape[1] + 1) and np.all(boxes[:, 3] <= source.shape[0] + 1)
        np.testing.assert_allclose(original, entry.head_boxes())
    assert any(PROSTHESIS_CLASS in labels for labels in data.source_labels)


def test_detector_training_adds_the_real_set_to_every_fold_and_records_it(tiny_data, tmp_path):
    folder = small_real_set(tmp_path / "real")
    context = prepare_context(tiny_data, tmp_path / "run", TINY, seed=0, folds=None, repeats=None, real_hips=folder)
    first = train(["detection"], context)["detection"]
    assert first["real_hips"]["radiographs"] == 2 and first["real_hips"]["validation_radiographs"] == 1
    assert first["real_hips"]["fingerprint"] == manifest_fingerprint(folder)
    assert first["folds"][0]["real_train_radiographs"] == 2
    held_out = first["folds"][0]["real_validation"]["0.5"]  # measured on the held-out real pelvis
    assert held_out["tp"] + held_out["fn"] == len(load_manifest(folder).files[2].heads)
    phantom_only = prepare_context(tiny_data, tmp_path / "run0", TINY, seed=0, folds=None, repeats=None)
    baseline = train(["detection"], phantom_only)["detection"]
    assert "real_hips" not in baseline
    assert first["folds"][0]["train_radiographs"] == baseline["folds"][0]["train_radiographs"] + 2
    # A changed real set is new training data: the detector is trained again, not resumed.
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({"files": manifest["files"][1:]}))
    shutil.rmtree(tmp_path / "run" / "detection" / "folds")
    again = train(["detection"], context)["detection"]
    assert again["real_hips"]["radiographs"] == 1


def test_a_real_set_whose_manifest_lists_a_missing_file_is_refused(tiny_data, tmp_path):
    folder = small_real_set(tmp_path / "real")
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / manifest["files"][0]["file"]).unlink()
    with pytest.raises(TrainingError, match="real training set: .* is listed but missing"):
        prepare_context(tiny_data, tmp_path / "run", TINY, seed=0, folds=None, repeats=None, real_hips=folder)
