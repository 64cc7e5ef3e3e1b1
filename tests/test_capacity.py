"""``avn capacity`` (gateway/capacity.py): replicas from bench figures, checked on a hand-made bench
whose numbers make every figure computable by hand (docs/scaling.md has the formulas)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avn.cli import app
from gateway.capacity import (
    Assumptions,
    CapacityError,
    Load,
    plan,
    read_bench,
    replicas_for,
    service_times,
)

# gateway 80 + 10 + 5 + 5 = 100 ms; detection 200 ms; each classifier 100 ms; p95 800 over a 400 ms
# mean total: tail factor 2.
TORCHSERVE = {
    "configuration": "torchserve",
    "step_means_ms": {"decode": 80, "crop": 10, "detect": 200, "classify": 100, "fuse": 5, "output": 5, "total": 400},
    "p50_ms": 390,
    "p95_ms": 800,
}
IN_PROCESS = {
    "configuration": "in-process",
    "step_means_ms": {"decode": 50, "crop": 10, "detect": 100, "classify": 50, "fuse": 0, "output": 0, "total": 210},
    "p50_ms": 200,
    "p95_ms": 210,
}
BENCH = {"radiographs": 20, "concurrency": 4, "results": [IN_PROCESS, TORCHSERVE]}
# 36,000 radiographs an hour at a peak factor of 2: 20 radiographs a second.
LOAD = Load(radiographs_per_hour=36_000, peak_factor=2, latency_target_ms=2000, utilisation=0.5, min_replicas=1)


@pytest.fixture
def bench_file(tmp_path: Path) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(BENCH))
    return path


def test_service_times_come_from_the_torchserve_configuration_first():
    times = service_times(BENCH)
    assert times.configuration == "torchserve"
    assert times.gateway_ms == 100
    assert times.model_ms == {"detection": 200, "view": 100, "side": 100, "staging": 100, "notes": 100}
    assert times.tail_factor == 2.0
    assert service_times(BENCH, "in-process").gateway_ms == 60
    assert service_times(BENCH, "in-process").tail_factor == 1.0


def test_a_missing_configuration_or_step_is_refused():
    with pytest.raises(CapacityError, match="naive"):
        service_times(BENCH, "naive")
    broken = {"results": [{**TORCHSERVE, "step_means_ms": {"decode": 1, "detect": float("nan")}}]}
    with pytest.raises(CapacityError, match="crop"):
        service_times(broken)


def test_a_file_that_is_no_bench_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"figures": []}')
    with pytest.raises(CapacityError, match="results"):
        read_bench(path)
    path.write_text("not json")
    with pytest.raises(CapacityError, match="not a bench JSON"):
        read_bench(path)


def test_replicas_are_the_busy_time_over_the_target_utilisation():
    # λ·S ÷ (P·u): 20/s × 0.2 s ÷ 0.5 = 8 replicas exactly, not 9 through rounding noise
    assert replicas_for(20, 200, 1, 0.5, 1) == 8
    assert replicas_for(20, 201, 1, 0.5, 1) == 9
    assert replicas_for(20, 100, 2, 0.5, 1) == 2  # two radiographs at once per replica
    assert replicas_for(0.01, 100, 1, 0.5, 2) == 2  # the minimum


def test_the_plan_by_hand():
    result = plan(service_times(BENCH), LOAD)
    assert LOAD.peak_per_s == 20
    assert result.gateway_replicas == 2  # 20 × 0.1 ÷ (2 cores × 0.5)
    assert result.model_replicas == {"detection": 8, "view": 4, "side": 4, "staging": 4, "notes": 4}
    for stage in result.stages.values():
        assert stage.utilisation(20) == pytest.approx(0.5)
    # every stage at ρ = 0.5 doubles its service time: (200 + 400 + 200) ms × tail factor 2
    assert result.latency_ms == pytest.approx(1600)
    assert result.latency_met


def test_a_tighter_latency_target_buys_replicas():
    relaxed = plan(service_times(BENCH), LOAD)
    tight = plan(service_times(BENCH), Load(36_000, 2, latency_target_ms=1200, utilisation=0.5, min_replicas=1))
    assert tight.latency_met and tight.latency_ms <= 1200
    assert sum(s.replicas for s in tight.stages.values()) > sum(s.replicas for s in relaxed.stages.values())
    for name, stage in tight.stages.items():
        assert stage.replicas >= relaxed.stages[name].replicas
    # detection queues longest (200 ms of its 400), so it gets the first replica added
    assert tight.model_replicas["detection"] > relaxed.model_replicas["detection"]


def test_a_target_under_the_bare_service_times_is_not_met():
    # (100 + 200 + 100) ms × 2 = 800 ms with no queueing at all: no replica count gets under it
    result = plan(service_times(BENCH), Load(36_000, 2, latency_target_ms=790, utilisation=0.5, min_replicas=1))
    assert not result.latency_met
    assert result.latency_ms > 790


def test_shared_resources_and_the_next_bottleneck():
    result = plan(service_times(BENCH), LOAD)
    shared = {r.name: r for r in result.shared}
    gateway = shared["gateway CPU (HPA maxReplicas)"]
    assert gateway.load == pytest.approx(2.0) and gateway.headroom == pytest.approx(5.0)
    network = shared["ingress network (full-size DICOM)"]
    assert network.load == pytest.approx(20 * 12 * 8 / 1000)  # 1.92 Gbit/s of 12 MB radiographs
    assert network.headroom == pytest.approx(10 / 1.92)
    assert shared["Redis operations"].load == 40  # a lookup and a store per radiograph
    assert result.next_bottleneck is gateway  # 5× before the network's 5.2×
    bigger_files = plan(service_times(BENCH), LOAD, Assumptions(radiograph_mb=13))
    assert bigger_files.next_bottleneck.name == "ingress network (full-size DICOM)"  # 2.08 Gbit/s: 4.8×


def test_impossible_loads_are_refused():
    for arguments in ({"radiographs_per_hour": 0}, {"radiographs_per_hour": 1, "utilisation": 1.5}):
        with pytest.raises(CapacityError):
            Load(**arguments)


def test_avn_capacity_prints_and_writes_the_plan(bench_file, tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(
        app,
        [
            "capacity",
            str(bench_file),
            "--radiographs-per-hour",
            "36000",
            "--peak-factor",
            "2",
            "--utilisation",
            "0.5",
            "--min-replicas",
            "1",
            "--json",
            str(out),
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "next bottleneck: gateway CPU (HPA maxReplicas), at 5.0×" in result.output
    document = json.loads(out.read_text())
    assert document["model_replicas"]["detection"] == 8
    assert document["gateway_replicas"] == 2
    assert math.isclose(document["latency_p95_ms"], 1600)


def test_avn_capacity_refuses_a_bad_bench_with_exit_2(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("{}")
    result = CliRunner().invoke(app, ["capacity", str(path), "--radiographs-per-hour", "10"])
    assert result.exit_code == 2
