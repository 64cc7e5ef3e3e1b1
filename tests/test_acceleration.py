"""Served forms of the head classifiers (avn/models/acceleration.py, avn/optimisation.py): each
form answers like fp32, a form that loses more than 0.005 AUC is refused, the chosen form and its
figures are in the model card, and an archive's int8 weights are exactly the ones checked.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_inference_paths import encode_npy, handle, served_handler

from avn.models import build_classifier, load_checkpoint, save_checkpoint
from avn.models.acceleration import (
    AUC_TOLERANCE,
    BF16,
    CHANNELS_LAST,
    CPU_FORMS,
    FP16,
    FP32,
    INT8,
    choose_form,
    forms_for_this_cpu,
    serve_as,
)
from avn.models.checkpoint import CheckpointError, rewrite_card
from avn.optimisation import Optimisation, optimised_checkpoint
from avn.serving.inprocess import InProcessBackend
from avn.store import StoreError, build_store

SIZE = 64


def crops(count: int, seed: int) -> np.ndarray:
    """Smooth random crops: a blurred field is closer to a radiograph than white noise."""
    rng = np.random.default_rng(seed)
    field = rng.random((count, SIZE // 8, SIZE // 8), dtype=np.float32)
    return np.kron(field, np.ones((8, 8), dtype=np.float32))


@pytest.fixture(scope="module")
def view_model():
    torch.manual_seed(0)
    return build_classifier("view").eval()


@pytest.mark.parametrize("form", [*forms_for_this_cpu(), FP16])
def test_every_form_answers_like_fp32_with_cams(view_model, form: str) -> None:
    batch = crops(6, seed=1)
    reference = view_model.predict(batch, cam_classes=[None] * 6)
    choice = choose_form(view_model, crops(32, seed=2), None, None, SIZE, forms=(form,) if form != FP16 else (FP32,))
    trunk = None
    if form == INT8:
        from avn.models.acceleration import int8_from_state

        trunk = int8_from_state(view_model, choice.int8_state)
    served = serve_as(_copy(view_model), form, trunk)
    answer = served.predict(batch, cam_classes=[None] * 6)
    tolerance = {FP32: 1e-6, CHANNELS_LAST: 1e-4}.get(form, 0.05)
    np.testing.assert_allclose(answer.probabilities, reference.probabilities, atol=tolerance)
    assert answer.probabilities.dtype == np.float32 and answer.cams.shape == reference.cams.shape
    assert served.form == form


def test_a_form_that_loses_auc_is_refused(view_model) -> None:
    validation = crops(40, seed=3)
    reference = view_model.predict(validation).probabilities
    # labels the untrained fp32 model ranks perfectly (AUC 1.0): the check compares with fp32's own AUC
    labels = np.where(reference[:, 0] > np.median(reference[:, 0]), 0, 1)

    def wrong_form(model):
        # logits negated: the ranking reversed
        model.runner = lambda batch: (-model.forward_features(batch)[0], model.forward_features(batch)[1])
        return model

    choice = choose_form(
        view_model, crops(16, seed=4), validation, labels, SIZE, forms=(FP32, INT8), builders={INT8: wrong_form}
    )
    assert not choice.figures[INT8].accepted
    assert "AUC" in choice.figures[INT8].reason and choice.figures[INT8].max_auc_loss > AUC_TOLERANCE
    assert choice.form == FP32 and choice.int8_state is None
    assert choice.figures[FP32].max_auc_loss == 0.0 and choice.checked


def test_untrained_weights_are_chosen_by_speed_and_labelled_unchecked(view_model) -> None:
    choice = choose_form(view_model, crops(16, seed=5), None, None, SIZE)
    assert not choice.checked and "not checked" in choice.note
    timed = {form: figures.ms_per_batch for form, figures in choice.figures.items() if form != FP16}
    assert set(timed) == set(forms_for_this_cpu()) and all(value > 0 for value in timed.values())
    assert choice.form == min(timed, key=timed.get)
    record = choice.card_record()
    assert record["form"] == choice.form and record["forms"][choice.form]["ms_per_batch"] == timed[choice.form]


@pytest.fixture(scope="module")
def int8_checkpoint(tmp_path_factory) -> Path:
    """A staging checkpoint served as int8, written the way build-store writes one."""
    root = tmp_path_factory.mktemp("int8")
    torch.manual_seed(1)
    metadata = {"version": "1", "training_data_hash": "test", "input_size": SIZE, "temperature": 1.3}
    save_checkpoint(root / "run" / "staging" / "model.pt", build_classifier("staging"), "staging", metadata)
    target = root / "served" / "staging" / "model.pt"
    target.parent.mkdir(parents=True)
    optimised_checkpoint(root / "run" / "staging" / "model.pt", target, Optimisation(None, forms=(INT8,)), {})
    return target


def test_an_int8_checkpoint_serves_the_checked_weights_in_the_handler_and_in_process(int8_checkpoint: Path) -> None:
    model, card = load_checkpoint(int8_checkpoint)
    assert model.form == INT8 and card.optimisation["form"] == INT8 and card.temperature == 1.3
    fp32, _ = load_checkpoint(int8_checkpoint, optimised=False)
    assert fp32.form == FP32 and fp32.runner is None
    batch = crops(4, seed=6)
    handler = served_handler("staging", int8_checkpoint.parent)
    assert handler.model.form == INT8
    answer = handle(handler, [encode_npy(batch)])[0]
    backend = InProcessBackend.from_run(int8_checkpoint.parent.parent)
    in_process = asyncio.run(backend.classify("staging", batch)).probabilities
    np.testing.assert_allclose(model.predict(batch).probabilities, in_process, rtol=0, atol=1e-6)
    np.testing.assert_allclose(answer["probabilities"], in_process, rtol=0, atol=1e-4)
    # int8 is close to, not equal to, fp32
    assert np.abs(in_process - fp32.predict(batch).probabilities).max() < 0.05
    described = handler.describe_handle()
    assert '"form": "int8"' in described and '"cuda_form"' in described


def test_a_form_this_machine_cannot_run_falls_back_to_fp32_arithmetic(int8_checkpoint: Path, monkeypatch) -> None:
    import avn.models.checkpoint as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "int8_available", lambda: False)
    model, _ = load_checkpoint(int8_checkpoint)
    assert model.form == CHANNELS_LAST
    card = load_checkpoint(int8_checkpoint, optimised=False)[1]
    bf16_card = {**card.optimisation, "form": BF16}
    monkeypatch.setattr(checkpoint_module, "cpu_has_bf16", lambda: False)
    fallback = build_classifier("staging").eval()
    checkpoint_module._serve_chosen_form(
        fallback, card.__class__(**{**card.__dict__, "optimisation": bf16_card}), None, torch.device("cpu")
    )
    assert fallback.form == CHANNELS_LAST


def test_an_int8_form_needs_its_weights_and_a_rewritten_card_drops_the_form(
    int8_checkpoint: Path, tmp_path: Path
) -> None:
    model, card = load_checkpoint(int8_checkpoint, optimised=False)
    metadata = {"version": "1", "training_data_hash": "test", "optimisation": card.optimisation}
    with pytest.raises(CheckpointError, match="int8 form needs its quantised weights"):
        save_checkpoint(tmp_path / "model.pt", model, "staging", metadata)
    copy = tmp_path / "copy.pt"
    shutil.copy(int8_checkpoint, copy)
    rewritten = rewrite_card(copy, model, card, temperature=2.0)
    assert rewritten.optimisation == {} and load_checkpoint(copy)[0].form == FP32


def test_build_store_refuses_a_data_set_the_models_were_not_trained_on(tmp_path: Path) -> None:
    from gateway_support import write_tiny_run

    run = write_tiny_run(tmp_path / "run")
    (tmp_path / "data").mkdir()
    with pytest.raises(StoreError, match="no training data set"):
        build_store(run, tmp_path / "store", tasks=("view",), optimisation=Optimisation(tmp_path / "data"))


def test_build_store_refuses_a_data_set_whose_fingerprint_is_not_the_cards(tmp_path: Path) -> None:
    from gateway_support import write_tiny_run

    from avn.phantom.build import PhantomOptions, build_phantom

    run = write_tiny_run(tmp_path / "run")  # cards say training_data_hash "test"
    build_phantom(PhantomOptions(subjects=1, seed=3, image_format="png", scale=0.1), tmp_path / "data", workers=1)
    with pytest.raises(StoreError, match="not the data set the view model was trained on"):
        build_store(run, tmp_path / "store", tasks=("view",), optimisation=Optimisation(tmp_path / "data"))
    assert not (tmp_path / "store" / "view.mar").exists()


def test_cpu_forms_are_known() -> None:
    assert set(forms_for_this_cpu()) <= set(CPU_FORMS) and FP32 in forms_for_this_cpu()


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_retune_store_rewrites_only_the_serving_settings(tmp_path: Path) -> None:
    import zipfile

    from gateway_support import write_tiny_store

    from avn.store import DEFAULT_SERVING, ServingConfig, retune_store, serving_of

    store = write_tiny_store(tmp_path / "tiny")
    tuned = retune_store(store, tmp_path / "tuned", {"view": ServingConfig(batch_size=16, max_batch_delay_ms=5)})
    assert serving_of(tuned["view"]) == ServingConfig(batch_size=16, max_batch_delay_ms=5)
    assert serving_of(tuned["detection"]) == serving_of(store / "detection.mar") == DEFAULT_SERVING["detection"]
    with zipfile.ZipFile(store / "view.mar") as before, zipfile.ZipFile(tuned["view"]) as after:
        assert before.namelist() == after.namelist()
        assert before.read("model.pt") == after.read("model.pt")
    # TorchServe's archive reader is what counts: the copy still loads in-process from its checkpoint
    backend = InProcessBackend.from_store(tmp_path / "tuned")
    assert set(backend.cards()) == {"detection", "view", "side", "staging", "notes"}


def test_the_detector_is_served_in_its_checked_form_and_falls_back_without_bf16(tmp_path: Path, monkeypatch) -> None:
    from gateway_support import phantom_png, untrained_detector

    import avn.models.checkpoint as checkpoint_module
    from avn.dataset.images import read_radiograph
    from avn.models.acceleration import choose_detector_form, detector_forms_for_this_cpu

    torch.manual_seed(0)
    detector = untrained_detector().eval()
    image = read_radiograph(phantom_png(tmp_path)).pixels
    own_boxes = [detector.detect(image).boxes]  # truths fp32 finds exactly: its F1 is 1.0
    choice = choose_detector_form(detector, [image], own_boxes)
    assert choice.checked and set(choice.figures) == {*detector_forms_for_this_cpu(), FP16}
    assert choice.figures[FP32].auc == {"f1_at_iou_0.5": 1.0, "min_box_iou_with_fp32": 1.0}
    assert choice.figures[FP32].max_auc_loss == 0.0 and choice.figures[FP32].decisions_changed == 0.0
    for figures in choice.figures.values():  # a form that moves a box is refused, whatever its F1
        moved = figures.auc["min_box_iou_with_fp32"] < 0.95
        assert figures.accepted == (not moved and figures.max_auc_loss <= AUC_TOLERANCE), figures
    assert choice.figures[choice.form].accepted and choice.int8_state is None
    metadata = {"version": "1", "training_data_hash": "test", "optimisation": {**choice.card_record(), "form": BF16}}
    save_checkpoint(tmp_path / "model.pt", detector, "detection", metadata)
    served, card = load_checkpoint(tmp_path / "model.pt")
    expected = BF16 if BF16 in detector_forms_for_this_cpu() else CHANNELS_LAST
    assert served.form == expected and card.optimisation["form"] == BF16
    if served.form == BF16:
        assert served.autocast_dtype == torch.bfloat16
        found = served.detect(image)
        assert found.boxes.dtype == np.float32 and found.scores.dtype == np.float32
    monkeypatch.setattr(checkpoint_module, "cpu_has_bf16", lambda: False)
    assert load_checkpoint(tmp_path / "model.pt")[0].form == CHANNELS_LAST
    assert load_checkpoint(tmp_path / "model.pt", optimised=False)[0].form == FP32
