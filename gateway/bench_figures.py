"""The figures of ``avn bench``: what one configuration's run measured, and what is derived from it.

Per configuration (:class:`BenchFigures`): every answered request as a :class:`Sample` (transfer
syntax, client latency, the server's step timings), the single-client latencies (one client,
sequential requests: the latency without queueing), the cache-hit latencies (a radiograph sent
again with the cache on) and the peak resident memory. From them: throughput, p50/p95/p99, step
means, figures per transfer syntax, the ratios to the naive baseline and the goal figures — the
gateway's overhead of TorchServe over in-process (%), and decode as % of a radiograph's total time.

Percentiles are numpy's linear interpolation between order statistics (``np.percentile``'s
default); a figure with no measurement is NaN, written as ``null`` in the JSON document.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STEPS = ("decode", "detect", "crop", "classify", "fuse", "output", "total")
PERCENTILES = (50, 95, 99)
BASELINE = "naive"


@dataclass(frozen=True)
class Sample:
    """One answered request: its transfer syntax, the latency the client saw and the server's steps."""

    syntax: str
    latency_ms: float
    steps_ms: dict[str, float]


@dataclass
class BenchFigures:
    """What one configuration's run measured."""

    configuration: str
    radiographs: int
    concurrency: int
    seconds: float
    errors: int
    samples: list[Sample] = field(default_factory=list, repr=False)
    single_client: list[Sample] = field(default_factory=list, repr=False)
    cache_hits: list[Sample] = field(default_factory=list, repr=False)
    cache_misses_seen: int = 0  # answers of the cache-hit phase that were not hits (should be 0)
    memory_mb: dict[str, float] = field(default_factory=dict)
    first_error: str = ""
    syntaxes: list[str] = field(default_factory=list)  # in the order sent (else: as answers came)

    @property
    def latencies_ms(self) -> list[float]:
        return [sample.latency_ms for sample in self.samples]

    @property
    def throughput(self) -> float:
        done = self.radiographs - self.errors
        return done / self.seconds if self.seconds > 0 else 0.0

    @property
    def step_means_ms(self) -> dict[str, float]:
        return step_means(self.samples)

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def per_syntax(self) -> dict[str, dict[str, float]]:
        """Per transfer syntax (in the order sent): count, decode and total means, p50, decode share."""
        answered = list(dict.fromkeys(s.syntax for s in self.samples))
        order = [syntax for syntax in self.syntaxes if syntax in answered] or answered
        return {syntax: syntax_figures(self, syntax) for syntax in order}

    def summary(self) -> dict:
        """Every figure of this configuration, JSON-ready (the keys ``avn capacity`` reads included)."""
        means = self.step_means_ms
        return {
            "configuration": self.configuration,
            "radiographs": self.radiographs,
            "concurrency": self.concurrency,
            "seconds": self.seconds,
            "errors": self.errors,
            "first_error": self.first_error,
            "radiographs_per_s": self.throughput,
            **{f"p{q}_ms": self.percentile_ms(q) for q in PERCENTILES},
            "step_means_ms": means,
            "decode_share_pct": share_pct(means["decode"], means["total"]),
            "single_client": latency_figures(self.single_client),
            "cache_hit": {**latency_figures(self.cache_hits), "misses_seen": self.cache_misses_seen},
            "per_syntax": self.per_syntax(),
            "peak_rss_mb": dict(self.memory_mb),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (numpy's linear interpolation), NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else math.nan


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def step_means(samples: Sequence[Sample]) -> dict[str, float]:
    """The mean of each pipeline step over ``samples`` (server side, ms)."""
    return {step: mean([sample.steps_ms[step] for sample in samples]) for step in STEPS}


def share_pct(part: float, whole: float) -> float:
    """``part`` as a percentage of ``whole`` (NaN when whole is not positive)."""
    return 100.0 * part / whole if whole > 0 else math.nan


def latency_figures(samples: Sequence[Sample]) -> dict[str, float]:
    """Count, mean and p50/p95/p99 of the client latencies of ``samples``."""
    latencies = [sample.latency_ms for sample in samples]
    return {"requests": len(latencies), "mean_ms": mean(latencies)} | {
        f"p{q}_ms": percentile(latencies, q) for q in PERCENTILES
    }


def syntax_figures(figures: BenchFigures, syntax: str) -> dict[str, float]:
    """The figures of one transfer syntax: timed run (concurrent), single client and cache hits."""
    timed = [s for s in figures.samples if s.syntax == syntax]
    single = [s.steps_ms["decode"] for s in figures.single_client if s.syntax == syntax]
    means = step_means(timed)
    return {
        "requests": len(timed),
        "decode_mean_ms": means["decode"],
        "total_mean_ms": means["total"],
        "decode_share_pct": share_pct(means["decode"], means["total"]),
        "p50_ms": percentile([s.latency_ms for s in timed], 50),
        "single_client_decode_mean_ms": mean(single),
        "cache_hit_p99_ms": percentile([s.latency_ms for s in figures.cache_hits if s.syntax == syntax], 99),
    }


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and math.isfinite(denominator) else math.nan


def ratios_to_baseline(figures: Sequence[BenchFigures], baseline: str = BASELINE) -> dict[str, dict[str, float]]:
    """Per configuration: throughput ÷ the baseline's, and the baseline's latencies ÷ its own (× faster)."""
    base = next((f for f in figures if f.configuration == baseline), None)
    if base is None:
        return {}
    base_single = percentile([s.latency_ms for s in base.single_client], 50)
    return {
        f.configuration: {
            "throughput": ratio(f.throughput, base.throughput),
            **{f"p{q}_speedup": ratio(base.percentile_ms(q), f.percentile_ms(q)) for q in PERCENTILES},
            "single_client_p50_speedup": ratio(base_single, percentile([s.latency_ms for s in f.single_client], 50)),
        }
        for f in figures
    }


def goal_figures(figures: Sequence[BenchFigures]) -> dict[str, object]:
    """The figures the benchmark is for: TorchServe's overhead over in-process (single-client p50,
    concurrent p50, throughput) and decode's share of a radiograph's server-side total time."""
    named = {f.configuration: f for f in figures}
    shares = {f.configuration: share_pct(f.step_means_ms["decode"], f.step_means_ms["total"]) for f in figures}
    goals: dict[str, object] = {"decode_share_pct": shares}
    served, local = named.get("torchserve"), named.get("in-process")
    if served is not None and local is not None:
        goals["torchserve_overhead_pct"] = {
            "single_client_p50": overhead_pct(
                percentile([s.latency_ms for s in served.single_client], 50),
                percentile([s.latency_ms for s in local.single_client], 50),
            ),
            "p50": overhead_pct(served.percentile_ms(50), local.percentile_ms(50)),
            "throughput": overhead_pct(ratio(1.0, served.throughput), ratio(1.0, local.throughput)),
        }
    return goals


def overhead_pct(measured: float, reference: float) -> float:
    """How much longer ``measured`` takes than ``reference``, in % of the reference."""
    return 100.0 * (measured / reference - 1.0) if reference > 0 and math.isfinite(reference) else math.nan


def bench_document(figures: Sequence[BenchFigures], context: dict) -> dict:
    """The JSON document of a run: the context, each configuration's figures, ratios and goals."""
    return {
        **context,
        "results": [f.summary() for f in figures],
        "ratios_to_naive": ratios_to_baseline(figures),
        "goals": goal_figures(figures),
    }


def write_json(path: Path, figures: Sequence[BenchFigures], context: dict) -> None:
    """Write :func:`bench_document` to ``path`` (NaN as null: strict JSON)."""
    path.write_text(json.dumps(_nan_to_none(bench_document(figures, context)), indent=2, allow_nan=False))


def _nan_to_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(item) for item in value]
    return value
