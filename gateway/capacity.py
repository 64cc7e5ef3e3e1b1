"""``avn capacity``: replicas per model and gateway replicas for a load, from ``avn bench`` figures.

Pure arithmetic (docs/scaling.md gives the formulas and two worked examples). From a bench JSON
(``avn bench --json``) it takes one configuration's server-side step means as service times:

* gateway (CPU): decode + crop + fuse + output, per radiograph;
* ``detection``: the detect step; each classifier (view, side, staging, notes): the classify step,
  in which the four run concurrently, so each took at most that long (an upper bound).

For a peak arrival rate λ = radiographs per hour × peak factor ÷ 3600 (per second), a stage of
service time S (seconds) and P radiographs at once per replica needs ``ceil(λ·S ÷ (P·u))`` replicas
at target utilisation u (at least the minimum). Latency is estimated per stage as S ÷ (1 − ρ), the
mean response of a queue at utilisation ρ, summed along the critical path (gateway, detection,
the slowest classifier) and multiplied by the bench's tail factor (its p95 over its mean total);
replicas are added where the queueing delay is largest until that estimate meets the target.

The shared parts that replicas do not scale (the ingress link, one Redis, the gateway HPA's
ceiling) are compared with their capacity; the one with the least headroom is the next bottleneck.
Their capacities are assumptions, with defaults here and flags on the command line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

MODELS = ("detection", "view", "side", "staging", "notes")
CLASSIFIERS = ("view", "side", "staging", "notes")
GATEWAY_STEPS = ("decode", "crop", "fuse", "output")
PREFERRED_CONFIGURATIONS = ("torchserve", "in-process")  # the production path first
SECONDS_PER_HOUR = 3600.0
MAX_LATENCY_STEPS = 10_000  # replicas added one at a time to meet the latency target, at most


class CapacityError(ValueError):
    """A bench file or a load that cannot be planned for (no usable figures, impossible settings)."""


@dataclass(frozen=True)
class Load:
    radiographs_per_hour: float
    peak_factor: float = 4.0
    latency_target_ms: float = 2000.0
    utilisation: float = 0.6
    min_replicas: int = 2  # two of everything: one pod lost never stops the service

    def __post_init__(self) -> None:
        if self.radiographs_per_hour <= 0 or self.peak_factor < 1 or self.latency_target_ms <= 0:
            raise CapacityError("radiographs per hour > 0, peak factor >= 1 and latency target > 0 are needed")
        if not 0 < self.utilisation <= 1:
            raise CapacityError(f"utilisation must be in (0, 1], not {self.utilisation}")
        if self.min_replicas < 1:
            raise CapacityError("at least one replica of everything")

    @property
    def peak_per_s(self) -> float:
        return self.radiographs_per_hour * self.peak_factor / SECONDS_PER_HOUR


@dataclass(frozen=True)
class Assumptions:
    """Capacities not measured by ``avn bench``: the defaults are stated in docs/scaling.md."""

    gateway_cores: float = 2.0  # radiographs a gateway pod works on at once: its CPU limit
    gateway_max_replicas: int = 10  # the gateway HPA's maxReplicas (deploy/k8s)
    radiograph_mb: float = 12.0  # a full-size uncompressed DICOM: ~2500 x 2500 px x 16 bit
    link_gbps: float = 10.0  # the ingress link all radiographs arrive through
    result_kb: float = 150.0  # a cached diagnosis (JSON with two CAM PNGs), in Redis
    redis_ops_per_s: float = 50_000.0  # one Redis, one core, values of that size
    redis_gbps: float = 10.0  # the Redis pod's network


@dataclass(frozen=True)
class ServiceTimes:
    """Milliseconds of work per radiograph, by stage, from one bench configuration."""

    configuration: str
    gateway_ms: float
    model_ms: dict[str, float]
    tail_factor: float  # the bench's p95 latency over its mean total: how far the tail reaches


@dataclass
class Stage:
    name: str
    service_ms: float
    parallel: float  # radiographs one replica works on at once
    replicas: int

    def utilisation(self, rate_per_s: float) -> float:
        return rate_per_s * self.service_ms / 1000.0 / (self.parallel * self.replicas)

    def latency_ms(self, rate_per_s: float) -> float:
        """Mean response time, queueing included (S ÷ (1 − ρ)); infinite at or past saturation."""
        rho = self.utilisation(rate_per_s)
        return self.service_ms / (1.0 - rho) if rho < 1.0 else math.inf


@dataclass(frozen=True)
class SharedResource:
    name: str
    load: float
    capacity: float
    unit: str

    @property
    def headroom(self) -> float:
        """How many times the peak load the resource takes before it saturates."""
        return self.capacity / self.load if self.load > 0 else math.inf


@dataclass
class Plan:
    load: Load
    times: ServiceTimes
    stages: dict[str, Stage]
    latency_ms: float
    latency_met: bool
    shared: list[SharedResource] = field(default_factory=list)

    @property
    def model_replicas(self) -> dict[str, int]:
        return {model: self.stages[model].replicas for model in MODELS}

    @property
    def gateway_replicas(self) -> int:
        return self.stages["gateway"].replicas

    @property
    def next_bottleneck(self) -> SharedResource:
        return min(self.shared, key=lambda resource: resource.headroom)

    def summary(self) -> dict:
        return {
            "configuration": self.times.configuration,
            "peak_radiographs_per_s": self.load.peak_per_s,
            "model_replicas": self.model_replicas,
            "gateway_replicas": self.gateway_replicas,
            "utilisation": {name: stage.utilisation(self.load.peak_per_s) for name, stage in self.stages.items()},
            "latency_p95_ms": self.latency_ms,
            "latency_target_ms": self.load.latency_target_ms,
            "latency_met": self.latency_met,
            "shared": [
                {"name": r.name, "load": r.load, "capacity": r.capacity, "unit": r.unit, "headroom": r.headroom}
                for r in self.shared
            ],
            "next_bottleneck": self.next_bottleneck.name,
        }


# ---------------------------------------------------------------- reading the bench


def read_bench(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CapacityError(f"{path}: not a bench JSON ({error})") from error
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise CapacityError(f'{path}: no "results" list (write one with `avn bench --json FILE`)')
    return document


def service_times(bench: dict, configuration: str | None = None) -> ServiceTimes:
    """The service times of ``configuration`` (default: torchserve, else in-process) in a bench document."""
    results = {result["configuration"]: result for result in bench["results"]}
    name = configuration or next((c for c in PREFERRED_CONFIGURATIONS if c in results), None)
    if name not in results:
        raise CapacityError(f"the bench holds {sorted(results)}; none is {configuration or 'torchserve or in-process'}")
    result = results[name]
    steps = result["step_means_ms"]
    missing = [step for step in (*GATEWAY_STEPS, "detect", "classify") if not _finite_positive_or_zero(steps.get(step))]
    if missing:
        raise CapacityError(f"configuration {name}: no step means for {', '.join(missing)}")
    total = steps.get("total") or sum(steps[step] for step in (*GATEWAY_STEPS, "detect", "classify"))
    tail = result["p95_ms"] / total if total > 0 and _finite_positive_or_zero(result.get("p95_ms")) else 1.0
    return ServiceTimes(
        configuration=name,
        gateway_ms=sum(steps[step] for step in GATEWAY_STEPS),
        model_ms={"detection": steps["detect"], **{model: steps["classify"] for model in CLASSIFIERS}},
        tail_factor=max(tail, 1.0),
    )


def _finite_positive_or_zero(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


# ---------------------------------------------------------------- the plan


def replicas_for(rate_per_s: float, service_ms: float, parallel: float, utilisation: float, minimum: int) -> int:
    """Replicas that keep a stage at or under ``utilisation`` at ``rate_per_s``: ceil(λ·S ÷ (P·u))."""
    busy = rate_per_s * service_ms / 1000.0 / parallel
    return max(minimum, math.ceil(busy / utilisation - 1e-9))


def critical_path_ms(stages: dict[str, Stage], rate_per_s: float, tail_factor: float) -> float:
    """Estimated p95 latency: gateway + detection + the slowest classifier (they run concurrently)."""
    classify = max(stages[model].latency_ms(rate_per_s) for model in CLASSIFIERS)
    mean = stages["gateway"].latency_ms(rate_per_s) + stages["detection"].latency_ms(rate_per_s) + classify
    return mean * tail_factor


def plan(times: ServiceTimes, load: Load, assumptions: Assumptions = Assumptions()) -> Plan:
    rate = load.peak_per_s
    stages = {
        "gateway": Stage(
            "gateway",
            times.gateway_ms,
            assumptions.gateway_cores,
            replicas_for(rate, times.gateway_ms, assumptions.gateway_cores, load.utilisation, load.min_replicas),
        )
    }
    for model in MODELS:
        service = times.model_ms[model]
        stages[model] = Stage(
            model, service, 1.0, replicas_for(rate, service, 1.0, load.utilisation, load.min_replicas)
        )
    latency_met = _meet_latency(stages, rate, times.tail_factor, load.latency_target_ms)
    return Plan(
        load=load,
        times=times,
        stages=stages,
        latency_ms=critical_path_ms(stages, rate, times.tail_factor),
        latency_met=latency_met,
        shared=shared_resources(stages["gateway"], rate, load.utilisation, assumptions),
    )


def _meet_latency(stages: dict[str, Stage], rate: float, tail: float, target_ms: float) -> bool:
    """Add a replica where the queueing delay is longest until the estimate meets the target. False
    when the service times alone exceed it: replicas cannot help, faster hardware can."""
    path = ("gateway", "detection", *CLASSIFIERS)
    if critical_path_ms({n: Stage(n, s.service_ms, s.parallel, 10**9) for n, s in stages.items()}, rate, tail) > (
        target_ms
    ):
        return False
    for _ in range(MAX_LATENCY_STEPS):
        if critical_path_ms(stages, rate, tail) <= target_ms:
            return True
        slowest = max(path, key=lambda name: stages[name].latency_ms(rate) - stages[name].service_ms)
        stages[slowest].replicas += 1
    return critical_path_ms(stages, rate, tail) <= target_ms


def shared_resources(gateway: Stage, rate: float, utilisation: float, assumptions: Assumptions) -> list[SharedResource]:
    """What replicas do not scale, at the peak: the gateway's replica ceiling (its CPU, mostly decoding;
    the load is the fractional replicas needed at the target utilisation, before rounding up), the
    ingress link (full-size DICOM in), and Redis (a lookup and, on a miss, a store per radiograph)."""
    gateway_load = rate * gateway.service_ms / 1000.0 / (gateway.parallel * utilisation)
    ingress_gbps = rate * assumptions.radiograph_mb * 8 / 1000.0
    redis_gbps = rate * 2 * assumptions.result_kb * 8 / 1e6
    return [
        SharedResource("gateway CPU (HPA maxReplicas)", gateway_load, assumptions.gateway_max_replicas, "replicas"),
        SharedResource("ingress network (full-size DICOM)", ingress_gbps, assumptions.link_gbps, "Gbit/s"),
        SharedResource("Redis operations", rate * 2, assumptions.redis_ops_per_s, "ops/s"),
        SharedResource("Redis network", redis_gbps, assumptions.redis_gbps, "Gbit/s"),
    ]
