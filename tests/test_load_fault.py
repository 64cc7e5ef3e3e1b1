"""The load and fault script (``scripts/load_fault.py``) in small: a few clients for a few seconds
over REST and gRPC, Redis killed and restarted under load, mutated DICOM and PNG files; and, over a
real TorchServe, one model worker killed under load. The assertions are on counts — no failed
request (or only those in flight at the kill, with 503 / UNAVAILABLE), no 5xx, ready afterwards,
exit 0 — never on timings. The README quotes a full run (8 clients × 2 minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_a_short_load_and_fault_run_counts_no_failure(tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    command = [sys.executable, str(ROOT / "scripts" / "load_fault.py"), "--clients", "3", "--seconds", "8"]
    command += ["--phases", "load,redis,fuzz", "--fuzz", "40", "--json", str(figures_file)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert figures["load"]["requests"] > 0 and figures["load"]["failed"] == 0
    assert set(figures["load"]["outcomes"]) <= {"200", "grpc OK"}
    assert figures["redis_outage"]["requests"] > 0 and figures["redis_outage"]["failed"] == 0
    assert figures["fuzz"]["requests"] == 40 and figures["fuzz"]["server_errors"] == 0
    assert figures["fuzz"]["ready_after"] and figures["exit_code"] == 0


def test_a_torchserve_worker_killed_under_load_fails_only_in_flight_requests_with_503(tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    command = [sys.executable, str(ROOT / "scripts" / "load_fault.py"), "--phases", "worker", "--clients", "3"]
    command += ["--worker-seconds", "12", "--json", str(figures_file)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    worker = json.loads(figures_file.read_text())["worker"]
    assert worker["requests"] > 0 and worker["killed_pid"]
    assert set(worker["outcomes"]) <= {"200", "grpc OK", "503", "grpc UNAVAILABLE"}
    assert worker["failed"] <= 3 and worker["failed_not_503"] == 0 and worker["failed_not_in_flight_at_kill"] == 0
    assert worker["worker_back"] and worker["ready_after"] and worker["ok_after_recovery"] > 0
    assert worker["exit_code"] == 0
