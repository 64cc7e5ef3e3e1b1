"""Calibration: expected calibration error, reliability bins and temperature scaling.

A classifier's probability is calibrated when, of all answers given with confidence p, a share p is
right. Temperature scaling (Guo et al., 2017) divides the logits by one scalar T > 0 fitted by
minimising the negative log-likelihood on held-out data: T > 1 softens an over-confident model,
T < 1 sharpens an under-confident one, and the predicted class never changes (argmax and, for
binary tasks, every ranking and AUC stay the same).

Conventions:

- Exclusive labels (view, side, staging): confidence = the top probability, correct = the top label
  is the truth.
- Multi-label (the 8 notes): every (head, note) pair is one binary answer; confidence = max(p, 1-p),
  correct = (p >= 0.5) equals the truth. ONE temperature serves all eight notes: the model card
  holds one scalar and a per-note vector fitted on a validation fold with a handful of positives
  per rare note would overfit.
- ECE uses ``bins`` equal-width confidence bins over [0, 1]: ECE = Σ_b (n_b / n) |acc_b − conf_b|.

Served probabilities already carry the model card's temperature; :func:`logits_from_probabilities`
recovers logits (up to a per-row constant, which softmax ignores) so that a report can rescale the
pipeline's own answers without a second inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

DEFAULT_BINS = 10
# Fitted temperatures are searched in [1/20, 20]: outside it the model is broken, not miscalibrated.
LOG_T_BOUNDS = (-np.log(20.0), np.log(20.0))
# Probabilities are float32 on the wire: clip before taking logs so 0 and 1 stay finite.
_PROBABILITY_FLOOR = 1e-7


# ---------------------------------------------------------------- confidence and correctness


def confidence_and_correct(
    probabilities: np.ndarray, truth: np.ndarray, multi_label: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) per answer, flattened; see the module docstring for the conventions.

    ``truth`` is class indices (n,) for exclusive labels, 0/1 (n, L) for multi-label.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth)
    if multi_label:
        predicted = probabilities >= 0.5
        confidence = np.where(predicted, probabilities, 1.0 - probabilities)
        return confidence.ravel(), (predicted == truth.astype(bool)).ravel()
    return probabilities.max(axis=1), probabilities.argmax(axis=1) == truth.astype(int)


# ---------------------------------------------------------------- reliability and ECE


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins: edges (bins + 1,), then per bin count, mean confidence, accuracy
    (NaN where a bin is empty)."""

    edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        gaps = np.abs(np.nan_to_num(self.accuracy) - np.nan_to_num(self.mean_confidence))
        return float((self.counts / total * gaps).sum())

    def to_dict(self) -> dict:
        return {
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "mean_confidence": self.mean_confidence.tolist(),
            "accuracy": self.accuracy.tolist(),
            "ece": self.ece,
        }


def bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each value in [0, 1]: [k/bins, (k+1)/bins), the last bin closed at 1.

    floor(v · bins) rather than comparing with ``linspace`` edges: an edge like 0.6 is
    0.6000000000000001 in ``linspace``, which would put 0.6 itself one bin too low.
    """
    return np.clip(np.floor(np.asarray(values, dtype=np.float64) * bins).astype(int), 0, bins - 1)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """Bin answers by confidence; the last bin includes 1.0."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if confidence.shape != correct.shape:
        raise ValueError(f"{confidence.size} confidences but {correct.size} correctness flags")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = bin_index(confidence, bins)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
    return ReliabilityBins(edges, counts, mean_confidence, accuracy)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """ECE = Σ_b (n_b / n) · |accuracy_b − mean confidence_b| over equal-width bins."""
    return reliability_bins(confidence, correct, bins).ece


def classifier_ece(probabilities: np.ndarray, truth: np.ndarray, multi_label: bool, bins: int = DEFAULT_BINS) -> float:
    return expected_calibration_error(*confidence_and_correct(probabilities, truth, multi_label), bins=bins)


# ---------------------------------------------------------------- temperature scaling


def apply_temperature(logits: np.ndarray, temperature: float, multi_label: bool) -> np.ndarray:
    """Probabilities of ``logits / temperature``: sigmoid per label, else a stable softmax."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-scaled))
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def logits_from_probabilities(probabilities: np.ndarray, multi_label: bool, temperature: float = 1.0) -> np.ndarray:
    """Logits that give ``probabilities`` at ``temperature`` (the temperature they were served with).

    Softmax: log p = z/T − logsumexp(z/T), so T·log p equals z up to a per-row constant, which softmax
    ignores. Sigmoid: logit(p) = z/T exactly.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _PROBABILITY_FLOOR, 1.0 - _PROBABILITY_FLOOR)
    if multi_label:
        return temperature * (np.log(p) - np.log1p(-p))
    return temperature * np.log(p)


def negative_log_likelihood(logits: np.ndarray, truth: np.ndarray, temperature: float, multi_label: bool) -> float:
    """Mean NLL per answer (per head, or per (head, label) for multi-label) at ``temperature``."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    truth = np.asarray(truth)
    if multi_label:
        target = truth.astype(np.float64)
        # log(1 + e^-|z|) + max(z, 0) − z·y: BCE with logits, stable for large |z|.
        loss = np.logaddexp(0.0, -np.abs(scaled)) + np.maximum(scaled, 0.0) - scaled * target
        return float(loss.mean())
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probabilities[np.arange(len(truth)), truth.astype(int)].mean())


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float  # at T = 1
    nll_after: float  # at the fitted T
    ece_before: float
    ece_after: float
    samples: int  # heads

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fit_temperature(
    logits: np.ndarray, truth: np.ndarray, multi_label: bool, bins: int = DEFAULT_BINS
) -> TemperatureFit:
    """The T in [1/20, 20] minimising the NLL of ``logits / T``; searched over log T (bounded Brent),
    which makes the objective smooth and keeps T positive."""
    logits = np.asarray(logits, dtype=np.float64)
    truth = np.asarray(truth)
    if len(logits) == 0:
        raise ValueError("temperature scaling needs at least one validation sample")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, truth, float(np.exp(log_t)), multi_label),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    temperature = float(np.exp(result.x))
    return TemperatureFit(
        temperature=temperature,
        nll_before=negative_log_likelihood(logits, truth, 1.0, multi_label),
        nll_after=negative_log_likelihood(logits, truth, temperature, multi_label),
        ece_before=classifier_ece(apply_temperature(logits, 1.0, multi_label), truth, multi_label, bins),
        ece_after=classifier_ece(apply_temperature(logits, temperature, multi_label), truth, multi_label, bins),
        samples=int(len(logits)),
    )
