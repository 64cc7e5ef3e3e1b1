"""Calibration: ECE and reliability bins on hand-computed cases, temperature scaling on an
over-confident model, and a stored temperature reaching what both serving paths answer
(the in-process backend and the TorchServe handler's own code, called without a server).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gateway_support import TINY_INPUT, VERSION
from sklearn.metrics import log_loss

from avn.evaluation.calibration import (
    TemperatureFit,
    apply_temperature,
    classifier_ece,
    confidence_and_correct,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    negative_log_likelihood,
    reliability_bins,
)
from avn.evaluation.temperature import CALIBRATION_KEY, WEIGHTS_VERSION_KEY, logits_of, store_temperature
from avn.models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, read_card, save_checkpoint
from avn.models.classifier import build_classifier
from avn.serving.codec import CropsRequest
from avn.serving.handler_base import ClassifierHandler
from avn.serving.inprocess import InProcessBackend, load_archive
from avn.store import build_store

# ---------------------------------------------------------------- ECE and reliability bins


def test_ece_on_a_hand_computed_case() -> None:
    # Bin 0.9: confidence 0.9, accuracy 1/2 → gap 0.4, weight 2/4. Bin 0.6: confidence 0.6,
    # accuracy 1 → gap 0.4, weight 2/4. ECE = 0.4.
    confidence = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 0, 1, 1])
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.4)
    bins = reliability_bins(confidence, correct)
    assert bins.counts.tolist() == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert bins.accuracy[9] == pytest.approx(0.5) and bins.mean_confidence[6] == pytest.approx(0.6)
    assert np.isnan(bins.accuracy[0])


def test_confidence_one_falls_in_the_last_bin_and_a_perfect_model_has_zero_ece() -> None:
    bins = reliability_bins(np.array([1.0, 0.0, 0.1]), np.array([1, 0, 0]))
    assert bins.counts[9] == 1 and bins.counts[0] == 1 and bins.counts[1] == 1
    assert expected_calibration_error(np.ones(5), np.ones(5)) == 0.0


def test_confidence_and_correct_for_exclusive_and_multi_label_outputs() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]])
    confidence, correct = confidence_and_correct(probabilities, np.array([0, 2]), multi_label=False)
    assert confidence.tolist() == [0.7, 0.6] and correct.tolist() == [True, False]
    confidence, correct = confidence_and_correct(np.array([[0.8, 0.3]]), np.array([[1, 1]]), multi_label=True)
    assert confidence.tolist() == pytest.approx([0.8, 0.7]) and correct.tolist() == [True, False]


def test_nll_matches_scikit_learn_log_loss() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4))
    truth = rng.integers(0, 4, 50)
    probabilities = apply_temperature(logits, 1.7, multi_label=False)
    assert negative_log_likelihood(logits, truth, 1.7, False) == pytest.approx(
        log_loss(truth, probabilities, labels=range(4))
    )
    multi_truth = rng.integers(0, 2, (50, 3))
    multi_logits = rng.normal(size=(50, 3)) * 5
    sigmoid = apply_temperature(multi_logits, 2.0, multi_label=True)
    expected = -np.mean(multi_truth * np.log(sigmoid) + (1 - multi_truth) * np.log(1 - sigmoid))
    assert negative_log_likelihood(multi_logits, multi_truth, 2.0, True) == pytest.approx(expected)


# ---------------------------------------------------------------- temperature scaling


def over_confident_case(n: int = 2000, scale: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the model reports ``scale``·z: over-confident by that factor."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(scale=1.5, size=(n, 4))
    probabilities = apply_temperature(true_logits, 1.0, multi_label=False)
    truth = np.array([rng.choice(4, p=row) for row in probabilities])
    return scale * true_logits, truth


def test_temperature_scaling_lowers_ece_and_nll_on_an_over_confident_model() -> None:
    logits, truth = over_confident_case()
    fit = fit_temperature(logits, truth, multi_label=False)
    assert fit.temperature == pytest.approx(3.0, rel=0.1)  # undoes the factor
    assert fit.ece_after < fit.ece_before / 3
    assert fit.nll_after < fit.nll_before
    # The predicted class never changes.
    np.testing.assert_array_equal(apply_temperature(logits, fit.temperature, False).argmax(1), logits.argmax(1))


def test_temperature_scaling_of_a_multi_label_model() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(scale=2.0, size=(1500, 8))
    truth = (rng.random((1500, 8)) < apply_temperature(true_logits, 1.0, multi_label=True)).astype(int)
    fit = fit_temperature(2.5 * true_logits, truth, multi_label=True)
    assert fit.temperature == pytest.approx(2.5, rel=0.15)
    assert fit.ece_after < fit.ece_before


def test_served_probabilities_give_back_logits_that_rescale_correctly() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(20, 4)) * 4
    served = apply_temperature(logits, 2.0, multi_label=False)  # served at T = 2
    recovered = logits_from_probabilities(served, multi_label=False, temperature=2.0)
    np.testing.assert_allclose(
        apply_temperature(recovered, 1.0, False), apply_temperature(logits, 1.0, False), atol=1e-9
    )
    sigmoid = apply_temperature(logits, 1.5, multi_label=True)
    np.testing.assert_allclose(logits_from_probabilities(sigmoid, True, 1.5), logits, atol=1e-6)


def test_classifier_ece_of_calibrated_probabilities_is_small() -> None:
    logits, truth = over_confident_case(n=4000, scale=1.0, seed=5)
    assert classifier_ece(apply_temperature(logits, 1.0, False), truth, multi_label=False) < 0.03


# ---------------------------------------------------------------- the temperature in serving

FIT = TemperatureFit(temperature=2.5, nll_before=1.0, nll_after=0.8, ece_before=0.2, ece_after=0.05, samples=40)


def crops(count: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, TINY_INPUT, TINY_INPUT), dtype=np.float32)


def write_classifiers(run: Path, tasks: tuple[str, ...] = ("view", "side", "notes")) -> Path:
    """A run folder with a few random-init classifiers (the backend serves whatever is there)."""
    torch.manual_seed(0)
    for task in tasks:
        save_checkpoint(
            run / task / "model.pt",
            build_classifier(task),
            task,
            {"version": VERSION, "training_data_hash": "test", "input_size": TINY_INPUT},
        )
    return run


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """view and notes at T = 2.5, side uncalibrated."""
    run = write_classifiers(tmp_path_factory.mktemp("calibrated") / "run")
    for task in ("view", "notes"):
        store_temperature(run / task / "model.pt", FIT, {"fold": "r0f0"})
    return run


def test_store_temperature_writes_the_card_and_a_new_version(tmp_path: Path) -> None:
    checkpoint = write_classifiers(tmp_path / "run", ("view",)) / "view" / "model.pt"
    store_temperature(checkpoint, FIT, {"fold": "r0f0"})
    card = read_card(checkpoint)
    assert card.temperature == 2.5
    assert card.version == f"{VERSION}-t2.5000" and card.extra[WEIGHTS_VERSION_KEY] == VERSION
    assert card.extra[CALIBRATION_KEY]["fold"] == "r0f0" and card.extra[CALIBRATION_KEY]["ece_after"] == 0.05
    # Recalibrating starts from the weights' version, not from the previous temperature's.
    store_temperature(checkpoint, TemperatureFit(1.25, 1, 1, 1, 1, 1), {})
    assert read_card(checkpoint).version == f"{VERSION}-t1.2500"


def test_checkpoint_without_temperature_loads_at_one(tmp_path: Path) -> None:
    run = write_classifiers(tmp_path / "run", ("side",))
    path = run / "side" / "model.pt"
    payload = torch.load(path, weights_only=True)
    del payload["card"]["temperature"]  # a card written before temperatures existed
    assert payload["format"] == CHECKPOINT_FORMAT
    torch.save(payload, path)
    model, card = load_checkpoint(path)
    assert card.temperature == 1.0 and model.temperature == 1.0


def expected_probabilities(checkpoint: Path, batch: np.ndarray, temperature: float, multi_label: bool) -> np.ndarray:
    model, _ = load_checkpoint(checkpoint)
    return apply_temperature(logits_of(model, batch), temperature, multi_label)


@pytest.mark.parametrize(("task", "multi_label"), [("view", False), ("notes", True)])
def test_in_process_backend_serves_probabilities_at_the_stored_temperature(
    calibrated_run: Path, task: str, multi_label: bool
) -> None:
    batch = crops()
    backend = InProcessBackend.from_run(calibrated_run)
    served = asyncio.run(backend.classify(task, batch)).probabilities
    checkpoint = calibrated_run / task / "model.pt"
    np.testing.assert_allclose(served, expected_probabilities(checkpoint, batch, 2.5, multi_label), atol=1e-5)
    # and not what the same weights give at T = 1
    assert not np.allclose(served, expected_probabilities(checkpoint, batch, 1.0, multi_label), atol=1e-4)
    assert backend.cards()[task].temperature == 2.5


def test_an_uncalibrated_model_is_served_at_temperature_one(calibrated_run: Path) -> None:
    batch = crops()
    served = asyncio.run(InProcessBackend.from_run(calibrated_run).classify("side", batch)).probabilities
    np.testing.assert_allclose(
        served, expected_probabilities(calibrated_run / "side" / "model.pt", batch, 1.0, False), atol=1e-5
    )


def handler_for(task: str, model_dir: Path, serialized: str = "model.pt") -> ClassifierHandler:
    """A TorchServe handler initialised the way TorchServe does it (context with model_dir and manifest)."""
    handler = type(f"{task.title()}Handler", (ClassifierHandler,), {"task": task})()
    context = SimpleNamespace(
        system_properties={"model_dir": str(model_dir), "gpu_id": None},
        manifest={"model": {"serializedFile": serialized, "modelName": task}},
    )
    handler.initialize(context)
    return handler


def test_torchserve_handler_code_applies_the_stored_temperature(calibrated_run: Path) -> None:
    batch = crops()
    handler = handler_for("view", calibrated_run / "view")
    with torch.inference_mode():
        answer = handler.infer([CropsRequest(batch)])[0]
    expected = expected_probabilities(calibrated_run / "view" / "model.pt", batch, 2.5, False)
    np.testing.assert_allclose(np.array(answer["probabilities"]), expected, atol=1e-4)
    assert answer["version"] == f"{VERSION}-t2.5000"


def test_archives_carry_the_temperature(calibrated_run: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    build_store(calibrated_run, store, tasks=("view",))
    loaded = load_archive(store / "view.mar", "view")
    assert loaded.card.temperature == 2.5 and loaded.module.temperature == 2.5
