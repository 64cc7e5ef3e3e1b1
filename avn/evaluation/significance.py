"""Bootstrap significance tests between two raters (model, reader, ablation variant) on one set.

The paper reports "t-test p-values on F1 scores" computed on its 10,000 bootstrap F1 values. A
t-test over bootstrap replicates is not a valid test: its standard error shrinks with the number
of resamples, so any difference becomes significant given enough resamples. We use bootstrap
tests that answer the same question with the same resamples instead:

* paired (both raters read the same heads, e.g. a reader and the model on E1, or two ablation
  variants on the T-set): every resample draws the same heads for both, the statistic's
  difference is computed per resample (``bootstrap_values`` with one seed);
* unpaired (different heads, e.g. a reader's unassisted E1 reads against assisted E2 reads):
  each set is resampled on its own (two seeds) and the differences are taken resample by resample.

The two-sided p-value is twice the smaller tail of the difference distribution around 0, with the
usual +1 correction: p = min(1, 2 · min(1 + #(d ≤ 0), 1 + #(d ≥ 0)) / (B + 1)). It is the smallest
α for which the (1 − α) percentile interval of the difference excludes 0. Identical raters give
every d = 0 and p = 1; a rater better on (nearly) every resample gives p ≈ 2 / (B + 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from avn.evaluation.bootstrap import DEFAULT_LEVEL, RowStatistic, bootstrap_values

PAIRED_METHOD = "paired bootstrap (same resampled heads for both), two-sided"
UNPAIRED_METHOD = "unpaired bootstrap (each set resampled on its own), two-sided"


@dataclass(frozen=True)
class Comparison:
    """Statistic of A minus statistic of B, its bootstrap interval and two-sided p-value."""

    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    method: str
    resamples: int
    defined_resamples: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    statistic: RowStatistic,
    truth: np.ndarray,
    predicted_a: np.ndarray,
    predicted_b: np.ndarray,
    resamples: int,
    seed: int,
    level: float = DEFAULT_LEVEL,
) -> Comparison:
    """A − B for two raters of the same heads, resampling heads jointly."""
    truth, predicted_a, predicted_b = (np.asarray(v) for v in (truth, predicted_a, predicted_b))
    if not (len(truth) == len(predicted_a) == len(predicted_b)) or len(truth) == 0:
        raise ValueError("a paired comparison needs the same non-empty set of heads for both raters")
    observed = float(statistic(truth[None], predicted_a[None])[0] - statistic(truth[None], predicted_b[None])[0])
    values_a = bootstrap_values(statistic, truth, predicted_a, resamples=resamples, seed=seed)
    values_b = bootstrap_values(statistic, truth, predicted_b, resamples=resamples, seed=seed)
    return _comparison(observed, values_a - values_b, PAIRED_METHOD, resamples, level)


def unpaired_bootstrap(
    statistic: RowStatistic,
    truth_a: np.ndarray,
    predicted_a: np.ndarray,
    truth_b: np.ndarray,
    predicted_b: np.ndarray,
    resamples: int,
    seed: int,
    level: float = DEFAULT_LEVEL,
) -> Comparison:
    """A − B for raters of different heads, resampling each set independently."""
    truth_a, predicted_a, truth_b, predicted_b = (np.asarray(v) for v in (truth_a, predicted_a, truth_b, predicted_b))
    observed = float(statistic(truth_a[None], predicted_a[None])[0] - statistic(truth_b[None], predicted_b[None])[0])
    values_a = bootstrap_values(statistic, truth_a, predicted_a, resamples=resamples, seed=seed)
    # A different seed: the two sets' resamples must be independent draws.
    values_b = bootstrap_values(statistic, truth_b, predicted_b, resamples=resamples, seed=seed + 1)
    return _comparison(observed, values_a - values_b, UNPAIRED_METHOD, resamples, level)


def two_sided_p(differences: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value of H0 "no difference" from the resampled differences."""
    defined = differences[~np.isnan(differences)]
    if defined.size == 0:
        return None
    below = 1 + int(np.count_nonzero(defined <= 0))
    above = 1 + int(np.count_nonzero(defined >= 0))
    return float(min(1.0, 2.0 * min(below, above) / (defined.size + 1)))


def _comparison(observed: float, differences: np.ndarray, method: str, resamples: int, level: float) -> Comparison:
    defined = differences[~np.isnan(differences)]
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = (float(v) for v in np.percentile(defined, [tail, 100.0 - tail])) if defined.size else (None, None)
    return Comparison(
        difference=None if np.isnan(observed) else observed,
        low=low,
        high=high,
        p_value=two_sided_p(differences),
        method=method,
        resamples=resamples,
        defined_resamples=int(defined.size),
    )
