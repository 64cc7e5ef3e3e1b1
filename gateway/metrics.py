"""Prometheus metrics of the gateway, served as text at ``GET /metrics`` (REST).

One :class:`GatewayMetrics` per gateway process, shared by the REST app and the gRPC servicer, on
its own registry (several apps in one process — tests — never collide in the global one):

* ``avn_requests_total{protocol, operation, outcome}`` — every request; ``outcome`` is ``ok`` or
  the error type (``InvalidImage``, ``ModelUnavailable``, …);
* ``avn_request_errors_total{protocol, operation, error}`` — the failed ones only;
* ``avn_request_duration_seconds{protocol, operation}`` — latency histogram;
* ``avn_step_duration_seconds{step}`` — pipeline step times (decode, detect, crop, classify, fuse,
  output, total) of every computed radiograph;
* ``avn_diagnoses_total{cache}`` — radiographs answered from the cache (``hit``) or computed (``miss``);
* ``avn_cache_lookups_total{result}`` and ``avn_cache_errors_total`` — the cache's own counters
  (Redis failures served uncached), read from the cache at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

OK = "ok"
# Radiograph latencies: tens of ms (cache hit) to tens of seconds (CPU, large study).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """The counters and histograms above; ``render()`` gives the exposition text."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "avn_requests",
            "Requests by protocol, operation and outcome.",
            ["protocol", "operation", "outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "avn_request_errors",
            "Failed requests by error type.",
            ["protocol", "operation", "error"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "avn_request_duration_seconds",
            "Request latency.",
            ["protocol", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.steps = Histogram(
            "avn_step_duration_seconds",
            "Pipeline step time per computed radiograph.",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.diagnoses = Counter(
            "avn_diagnoses", "Radiographs diagnosed, by whether the cache answered.", ["cache"], registry=self.registry
        )
        self._cache_collector: _CacheCollector | None = None

    def observe_request(self, protocol: str, operation: str, seconds: float, error: str | None = None) -> None:
        """One finished request; ``error`` is the gateway error's type name when it failed."""
        outcome = error or OK
        self.requests.labels(protocol, operation, outcome).inc()
        if error is not None:
            self.errors.labels(protocol, operation, error).inc()
        self.latency.labels(protocol, operation).observe(seconds)

    def observe_diagnosis(self, diagnosis: Any) -> None:
        """Step times and the cache flag of one :class:`avn.pipeline.results.Diagnosis`."""
        self.diagnoses.labels("hit" if diagnosis.cache_hit else "miss").inc()
        if diagnosis.cache_hit:
            return  # a hit ran no model step: its zeros would drag every step's distribution down
        timings = diagnosis.timings
        for field in fields(timings):
            milliseconds = getattr(timings, field.name)
            if milliseconds > 0:
                self.steps.labels(field.name.removesuffix("_ms")).observe(milliseconds / 1000.0)

    def track_cache(self, cache: Any) -> None:
        """Export ``cache.stats`` (hits, misses, errors) at every scrape; one cache per registry."""
        if cache is None or self._cache_collector is not None:
            return
        self._cache_collector = _CacheCollector(cache)
        self.registry.register(self._cache_collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector(Collector):
    """Reads the cache's counters when scraped, so the cache does not depend on Prometheus."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self.cache.stats
        lookups = CounterMetricFamily("avn_cache_lookups", "Result-cache lookups by result.", labels=["result"])
        lookups.add_metric(["hit"], stats.hits)
        lookups.add_metric(["miss"], stats.misses)
        yield lookups
        yield CounterMetricFamily(
            "avn_cache_errors",
            "Cache failures (Redis unreachable): those requests were served uncached.",
            value=stats.errors,
        )
