"""Prometheus metrics of the gateway, served as text at ``GET /metrics`` (REST).

One :class:`GatewayMetrics` per gateway process, shared by the REST app and the gRPC servicer, on
its own registry (several apps in one process — tests — never collide in the global one):

* ``avn_requests_total{protocol, operation, outcome}`` — every request; ``outcome`` is ``ok`` or
  the error type (``InvalidImage``, ``ModelUnavailable``, …);
* ``avn_request_errors_total{protocol, operation, error}`` — the failed ones only;
* ``avn_request_duration_seconds{protocol, operation}`` — latency histogram;
* ``avn_step_duration_seconds{step}`` — pipeline step times (decode, detect, crop, classify, fuse,
  output, total) of every computed radiograph;
* ``avn_requests_in_flight{protocol, operation}`` — requests being answered now;
* ``avn_model_call_duration_seconds{model}`` — each model call as the gateway waits for it
  (TorchServe's queue and batch wait included);
* ``avn_diagnoses_total{cache}`` — radiographs answered from the cache (``hit``) or computed (``miss``);
* read from the pipeline at scrape time: ``avn_cache_lookups_total{result}`` and
  ``avn_cache_errors_total`` (the cache's own counters; Redis failures are served uncached),
  ``avn_cache_up`` (0 while Redis is unreachable) and ``avn_model_ready{model}`` (the last
  readiness probe of each model: ``/readyz`` and the gRPC health watcher, every few seconds).

``deploy/observability/`` holds a Grafana dashboard and Prometheus alert rules over these names
(``tests/test_observability.py`` checks that every name they use is exported here).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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
        self.in_flight = Gauge(
            "avn_requests_in_flight",
            "Requests being answered now.",
            ["protocol", "operation"],
            registry=self.registry,
        )
        self.model_calls = Histogram(
            "avn_model_call_duration_seconds",
            "Model call time as the gateway waits for it (model server queue and batch wait included).",
            ["model"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self._pipeline: Any = None

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

    def answering(self, protocol: str, operation: str) -> Any:
        """``with metrics.answering(...):`` counts the request in flight for the block's duration."""
        return self.in_flight.labels(protocol, operation).track_inprogress()

    def observe_model_call(self, model: str, seconds: float) -> None:
        self.model_calls.labels(model).observe(seconds)

    def track_pipeline(self, pipeline: Any) -> None:
        """Time the pipeline's model calls, and export its cache's counters and its models' readiness
        at every scrape; one pipeline per registry (the first one given)."""
        if self._pipeline is not None:
            return
        self._pipeline = pipeline
        pipeline.model_call_observers.append(self.observe_model_call)
        self.registry.register(_PipelineCollector(pipeline))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PipelineCollector(Collector):
    """Reads the cache's counters and the models' readiness when scraped, so that neither the cache
    nor the pipeline depends on Prometheus."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "avn_model_ready", "1 when the model's last readiness probe answered, else 0.", labels=["model"]
        )
        for model, answered in self.pipeline.model_readiness.items():
            ready.add_metric([model], 1.0 if answered else 0.0)
        yield ready
        if self.pipeline.cache is not None:
            yield from self._cache_families(self.pipeline.cache)

    @staticmethod
    def _cache_families(cache: Any) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = cache.stats
        lookups = CounterMetricFamily("avn_cache_lookups", "Result-cache lookups by result.", labels=["result"])
        lookups.add_metric(["hit"], stats.hits)
        lookups.add_metric(["miss"], stats.misses)
        lookups.add_metric(["rejected"], getattr(stats, "rejected", 0))  # a forged or tampered entry
        yield lookups
        yield CounterMetricFamily(
            "avn_cache_errors",
            "Cache failures (Redis unreachable): those requests were served uncached.",
            value=stats.errors,
        )
        # Only Redis can be down; the in-process caches are always up.
        yield GaugeMetricFamily(
            "avn_cache_up",
            "0 while the result cache (Redis) is unreachable, else 1.",
            value=float(getattr(cache, "available", True)),
        )
