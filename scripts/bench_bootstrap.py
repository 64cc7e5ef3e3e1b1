"""Time the vectorised bootstrap on a T-set-sized case (issue: ≤ 30 s for 300 heads on 2 cores).

    .venv/bin/python scripts/bench_bootstrap.py [--heads 300] [--resamples 10000]

Prints the time of one AUC interval, of each operating-point interval, and of the full set of
intervals an ``avn evaluate`` report computes for that many heads (about 40, notes macro over 8).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from avn.evaluation import bootstrap as bs


def timed(label: str, function) -> float:
    started = time.perf_counter()
    function()
    seconds = time.perf_counter() - started
    print(f"{label:<48} {seconds:6.2f} s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=300)
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, b = args.heads, args.resamples
    truth = (rng.random(n) < 0.6).astype(int)
    scores = np.clip(rng.normal(truth * 0.8, 0.5), 0, 1)
    predicted = (scores >= 0.5).astype(int)
    stages = rng.integers(0, 4, n)
    served = np.where(rng.random(n) < 0.8, stages, rng.integers(0, 4, n))

    def ci(statistic, *arrays):
        return bs.bootstrap_ci(statistic, *arrays, resamples=b, seed=0)

    print(f"{n} heads, {b} resamples")
    total = 0.0
    total += timed("AUC", lambda: ci(bs.auc_rows, truth, scores))
    total += timed("sensitivity", lambda: ci(bs.sensitivity_rows, truth, predicted))
    total += timed("specificity", lambda: ci(bs.specificity_rows, truth, predicted))
    total += timed("F1", lambda: ci(bs.f1_rows, truth, predicted))
    total += timed("4-class macro F1", lambda: ci(lambda t, p: bs.macro_f1_rows(t, p, 4), stages, served))
    # A report: 2 binary tasks (3 each), notes fused + raw (3 macro over 8 labels each), presence (4),
    # collapse (3 classes × 4 + macro F1), staging (4 × 4 + macro F1 + accuracy), subject level (3).
    aucs = 2 + 2 * 8 + 1 + 3 + 4
    cheap = 4 + 2 * 2 * 8 + 3 + 3 * 3 + 1 + 4 * 3 + 2 + 3
    started = time.perf_counter()
    for _ in range(aucs):
        ci(bs.auc_rows, truth, scores)
    for _ in range(cheap):
        ci(bs.sensitivity_rows, truth, predicted)
    print(f"{f'a whole report ({aucs} AUC + {cheap} other intervals)':<48} {time.perf_counter() - started:6.2f} s")


if __name__ == "__main__":
    main()
