"""The vectorised bootstrap: every row-wise statistic equals scikit-learn on each resample, intervals
cover the true value on synthetic data, and a seed reproduces an interval exactly.

Speed is measured, not asserted, by ``scripts/bench_bootstrap.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from avn.evaluation import bootstrap as bs

RESAMPLES_CHECKED = 60


def sample(n: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth, scores with ties (rounded), and thresholded predictions."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.4).astype(int)
    scores = np.round(np.clip(0.3 * truth + rng.random(n) * 0.7, 0, 1), 1)  # rounding makes ties
    return truth, scores, (scores >= 0.5).astype(int)


def resampled(*arrays: np.ndarray, seed: int = 5) -> list[np.ndarray]:
    indices = bs.resample_indices(len(arrays[0]), RESAMPLES_CHECKED, seed)
    return [array[indices] for array in arrays]


# ---------------------------------------------------------------- hand-computed cases


def test_auc_rows_on_a_hand_computed_case_with_a_tie() -> None:
    # Pairs (positive, negative): (0.35, 0.1) win, (0.35, 0.4) lose, (0.8, *) win twice, and a tie
    # (0.4 vs 0.4) counts one half: (1 + 0 + 1 + 1 + 0.5 + 1) / 6 over 3 positives × 2 negatives.
    truth = np.array([[0, 0, 1, 1, 1]])
    scores = np.array([[0.1, 0.4, 0.35, 0.8, 0.4]])
    assert bs.auc_rows(truth, scores)[0] == pytest.approx((1 + 0 + 1 + 1 + 1 + 0.5) / 6)


def test_operating_point_rows_on_a_hand_computed_case() -> None:
    truth = np.array([[1, 1, 1, 0, 0]])
    predicted = np.array([[1, 1, 0, 1, 0]])
    assert bs.sensitivity_rows(truth, predicted)[0] == pytest.approx(2 / 3)
    assert bs.specificity_rows(truth, predicted)[0] == pytest.approx(1 / 2)
    assert bs.precision_rows(truth, predicted)[0] == pytest.approx(2 / 3)
    assert bs.f1_rows(truth, predicted)[0] == pytest.approx(2 / 3)
    assert bs.accuracy_rows(truth, predicted)[0] == pytest.approx(3 / 5)


def test_undefined_rows_are_nan_and_zero_division_follows_scikit_learn() -> None:
    no_positive = np.array([[0, 0, 0]])
    with np.errstate(invalid="ignore"):
        assert math.isnan(bs.auc_rows(no_positive, np.array([[0.1, 0.2, 0.3]]))[0])
        assert math.isnan(bs.sensitivity_rows(no_positive, np.array([[1, 0, 0]]))[0])
    assert bs.f1_rows(no_positive, np.array([[0, 0, 0]]))[0] == 0.0
    assert bs.precision_rows(np.array([[1, 0, 0]]), np.array([[0, 0, 0]]))[0] == 0.0


# ---------------------------------------------------------------- agreement with scikit-learn per resample


def test_auc_rows_equal_roc_auc_score_on_every_resample() -> None:
    truth, scores, _ = sample()
    truth_rows, score_rows = resampled(truth, scores)
    with np.errstate(invalid="ignore"):
        rows = bs.auc_rows(truth_rows, score_rows)
    for t, s, value in zip(truth_rows, score_rows, rows, strict=True):
        if np.unique(t).size < 2:
            assert math.isnan(value)
        else:
            assert value == pytest.approx(roc_auc_score(t, s), abs=1e-12)


@pytest.mark.parametrize(
    ("statistic", "reference"),
    [
        (bs.sensitivity_rows, lambda t, p: recall_score(t, p, zero_division=0)),
        (bs.specificity_rows, lambda t, p: recall_score(t, p, pos_label=0, zero_division=0)),
        (bs.precision_rows, lambda t, p: precision_score(t, p, zero_division=0)),
        (bs.f1_rows, lambda t, p: f1_score(t, p, zero_division=0)),
        (bs.accuracy_rows, accuracy_score),
    ],
)
def test_binary_rows_equal_scikit_learn_on_every_resample(statistic, reference) -> None:
    truth, _, predicted = sample()
    truth_rows, predicted_rows = resampled(truth, predicted)
    with np.errstate(invalid="ignore"):
        rows = statistic(truth_rows, predicted_rows)
    for t, p, value in zip(truth_rows, predicted_rows, rows, strict=True):
        if not np.isnan(value):
            assert value == pytest.approx(reference(t, p), abs=1e-12)


def test_macro_f1_rows_equal_scikit_learn_macro_f1_on_every_resample() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, 50)
    predicted = np.where(rng.random(50) < 0.6, truth, rng.integers(0, 4, 50))
    truth_rows, predicted_rows = resampled(truth, predicted)
    rows = bs.macro_f1_rows(truth_rows, predicted_rows, 4)
    for t, p, value in zip(truth_rows, predicted_rows, rows, strict=True):
        assert value == pytest.approx(f1_score(t, p, average="macro", zero_division=0), abs=1e-12)


# ---------------------------------------------------------------- intervals


def synthetic_auc_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores N(1, 1) for positives and N(0, 1) for negatives: the true AUC is Φ(1/√2)."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.5).astype(int)
    return truth, rng.normal(truth.astype(float), 1.0)


TRUE_AUC = 0.5 * (1 + math.erf(0.5))  # Φ(1/√2) = 0.7602


def test_ci_contains_the_true_auc_on_a_synthetic_case() -> None:
    truth, scores = synthetic_auc_sample(300, seed=11)
    ci = bs.bootstrap_ci(bs.auc_rows, truth, scores, resamples=10_000, seed=0)
    assert ci.low < TRUE_AUC < ci.high
    assert ci.low < ci.estimate < ci.high
    assert ci.estimate == pytest.approx(roc_auc_score(truth, scores))
    assert ci.resamples == ci.defined_resamples == 10_000 and ci.level == 0.95


def test_ci_covers_the_true_value_about_95_percent_of_the_time() -> None:
    hits = 0
    trials = 40
    for trial in range(trials):
        truth, scores = synthetic_auc_sample(150, seed=100 + trial)
        ci = bs.bootstrap_ci(bs.auc_rows, truth, scores, resamples=1_000, seed=trial)
        hits += ci.low <= TRUE_AUC <= ci.high
    assert hits >= 0.85 * trials  # 95% nominal; the percentile bootstrap runs a little narrow


def test_same_seed_same_interval_other_seed_other_resamples() -> None:
    truth, scores = synthetic_auc_sample(100, seed=2)
    first = bs.bootstrap_ci(bs.auc_rows, truth, scores, resamples=2_000, seed=7)
    again = bs.bootstrap_ci(bs.auc_rows, truth, scores, resamples=2_000, seed=7)
    other = bs.bootstrap_ci(bs.auc_rows, truth, scores, resamples=2_000, seed=8)
    assert first == again and first.seed == 7
    assert (first.low, first.high) != (other.low, other.high)
    np.testing.assert_array_equal(
        bs.bootstrap_values(bs.auc_rows, truth, scores, resamples=500, seed=7),
        bs.bootstrap_values(bs.auc_rows, truth, scores, resamples=500, seed=7),
    )


def test_resamples_without_positives_are_left_out_and_counted() -> None:
    truth = np.zeros(20, dtype=int)
    truth[3] = 1  # one positive: about e^-1 of the resamples miss it
    predicted = truth.copy()
    with np.errstate(invalid="ignore"):
        ci = bs.bootstrap_ci(bs.sensitivity_rows, truth, predicted, resamples=2_000, seed=0)
    assert 0 < ci.defined_resamples < 2_000
    assert ci.low == ci.high == ci.estimate == 1.0


def test_interval_from_values_matches_bootstrap_ci_for_the_same_vector() -> None:
    truth, scores = synthetic_auc_sample(80, seed=4)
    values = bs.bootstrap_values(bs.auc_rows, truth, scores, resamples=3_000, seed=9)
    direct = bs.bootstrap_ci(bs.auc_rows, truth, scores, resamples=3_000, seed=9)
    derived = bs.interval_from_values(values, direct.estimate, resamples=3_000, seed=9)
    assert derived == direct


def test_bootstrap_refuses_empty_or_unequal_arrays() -> None:
    with pytest.raises(ValueError):
        bs.bootstrap_ci(bs.auc_rows, np.array([]), np.array([]))
    with pytest.raises(ValueError):
        bs.bootstrap_ci(bs.auc_rows, np.array([0, 1]), np.array([0.5]))
