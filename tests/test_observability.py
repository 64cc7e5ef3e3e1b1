"""deploy/observability/ (issue #16): the Prometheus alert rules pass `promtool check rules` and their
unit tests (`promtool test rules`), the Grafana dashboard loads and has the structure Grafana
imports, its queries parse as PromQL, and every metric name either file uses is one the gateway
exports (gateway/metrics.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from avn.pipeline.errors import DiagnosisError
from avn.pipeline.pipeline import Pipeline
from gateway.cache import LRUCache
from gateway.errors import ERROR_STATUS, service_failures
from gateway.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "deploy" / "observability"
RULES = FOLDER / "alerts.yml"
RULE_TESTS = FOLDER / "alerts.test.yml"
DASHBOARD = FOLDER / "grafana-dashboard.json"
GRID_COLUMNS = 24  # Grafana's dashboard grid
PANEL_TYPES = {"row", "timeseries", "stat"}
METRIC_NAME = re.compile(r"\bavn_[a-z0-9_]+\b")
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    if executable is None:
        pytest.fail("promtool is not installed (make system-deps installs Debian's prometheus package)")
    return subprocess.run([executable, *arguments], capture_output=True, text=True, timeout=60)


def exported_series() -> set[str]:
    """Every series name the gateway's /metrics can carry, from the registry of a gateway with a cache."""
    metrics = GatewayMetrics()
    metrics.track_pipeline(Pipeline(backend=None, cache=LRUCache(1)))
    names = set()
    for family in metrics.registry.collect():
        names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
    return names


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def rule_queries() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# ---------------------------------------------------------------- alert rules


def test_alert_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout


def test_alert_rules_fire_when_they_should_and_not_otherwise() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_four_alerts_of_the_issue_are_there() -> None:
    rules = [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert rules == ["AvnGatewayErrorRateHigh", "AvnGatewayP99LatencyHigh", "AvnModelNotReady", "AvnCacheDown"]


def test_service_errors_are_the_5xx_rows_of_the_error_table() -> None:
    """The error-rate alert and the dashboard count the service's failures, as gateway/errors.py
    defines them; a new 5xx error type must be added to both."""
    service_errors = service_failures()
    assert service_errors == ["DeadlineExceeded", "Internal", "ModelUnavailable"]  # a drain's refusals are planned
    pattern = f'error=~"{"|".join(service_errors)}"'
    assert pattern in rule_queries()[0]
    assert any(pattern in query for query in dashboard_queries())
    assert all(issubclass(cls, DiagnosisError) for cls in ERROR_STATUS)


# ---------------------------------------------------------------- dashboard


def test_dashboard_has_the_structure_grafana_imports() -> None:
    board = dashboard()
    assert isinstance(board["title"], str) and board["uid"] == "avn-gateway"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    [variable] = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES and panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) and grid[key] >= 0 for key in ("x", "y", "w", "h"))
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs) and all(target["expr"].strip() for target in panel["targets"])


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    """Requests, errors, latency per step and per model, cache hit rate, in-flight work."""
    queries = " ".join(dashboard_queries())
    for needed in (
        "avn_requests_total",
        "avn_request_errors_total",
        "avn_request_duration_seconds_bucket",
        "sum by (le, step) (rate(avn_step_duration_seconds_bucket",
        "sum by (le, model) (rate(avn_model_call_duration_seconds_bucket",
        'avn_diagnoses_total{cache="hit"}',
        "avn_requests_in_flight",
        "avn_model_ready",
        "avn_cache_up",
    ):
        assert needed in queries, needed


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Each query, with Grafana's $__rate_interval filled in, as a recording rule for promtool to parse."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"avn:dashboard_query_{index}", "expr": query.replace("$__rate_interval", "5m")}
                    for index, query in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    file = tmp_path / "dashboard-queries.yml"
    file.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(file))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# ---------------------------------------------------------------- one set of metric names


def test_every_metric_name_used_is_exported_by_the_gateway() -> None:
    exported = exported_series()
    used = {name for query in dashboard_queries() + rule_queries() for name in METRIC_NAME.findall(query)}
    used |= set(METRIC_NAME.findall(RULE_TESTS.read_text()))
    assert used, "no metric name found: the pattern is wrong"
    assert not used - exported, f"not exported by gateway/metrics.py: {sorted(used - exported)}"


def test_readme_points_to_the_observability_files() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "deploy/observability" in readme
