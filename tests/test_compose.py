"""docker-compose.yml checked by a real Compose `config` (`docker compose` v2 when the machine has
the plugin, else Debian's `docker-compose` 1.29, which `make install` installs): the file parses,
its variables interpolate, each profile brings the right TorchServe. No Docker engine is needed
for `config`, and none is started here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from avn.pipeline.backend import MODELS
from gateway.settings import environment_variables
from gateway.torchserve_backend import WORKERS_ENV_PREFIX

ROOT = Path(__file__).resolve().parent.parent


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    assert legacy, "no Compose found: `make install` installs Debian's docker-compose"
    return [legacy]


# The secrets compose insists on (it refuses to start without them).
SECRETS = {"AVN_REDIS_PASSWORD": "redis-password-for-config", "AVN_CACHE_SECRET": "cache-secret-for-config-0123"}


def compose_config(
    compose_file: Path, profile: str, with_secrets: bool = True, **variables: str
) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AVN_")}
    environment.update({**(SECRETS if with_secrets else {}), **variables})
    return subprocess.run(
        [
            *compose_command(),
            "--project-directory",
            str(compose_file.parent),
            "-f",
            str(compose_file),
            "--profile",
            profile,
            "config",
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


def resolved(profile: str, **variables: str) -> dict:
    run = compose_config(ROOT / "docker-compose.yml", profile, **variables)
    assert run.returncode == 0, run.stderr
    return yaml.safe_load(run.stdout)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_each_profile_resolves_to_redis_a_torchserve_and_the_gateway(profile: str) -> None:
    services = resolved(profile)["services"]
    torchserve = services["torchserve" if profile == "cpu" else "torchserve-gpu"]
    assert {"redis", "gateway"} <= set(services)
    assert any(volume["target"] == "/model_store" and volume.get("read_only") for volume in _volumes(torchserve))
    assert "torchserve" in torchserve["networks"]["default"]["aliases"]
    assert set(torchserve["environment"]) >= {f"{WORKERS_ENV_PREFIX}{name.upper()}" for name in MODELS}
    script = torchserve["command"][-1]
    compile(script.split("<<'PY'\n", 1)[1].split("PY\n", 1)[0], "inline", "exec")
    if profile == "gpu":
        device = torchserve["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert torchserve["environment"]["AVN_TS_GPUS"] == "-1"
    else:
        assert "deploy" not in torchserve and torchserve["environment"]["AVN_TS_GPUS"] == "0"


def test_the_gateway_gets_only_real_settings_and_waits_for_redis() -> None:
    gateway = resolved("cpu")["services"]["gateway"]
    unknown = [name for name in gateway["environment"] if name not in environment_variables()]
    assert not unknown, f"the gateway gets variables that are no setting: {unknown}"
    assert gateway["environment"]["AVN_TORCHSERVE_GRPC"] == "torchserve:7070"
    assert sorted(int(port["target"]) for port in _ports(gateway)) == [8000, 50051]
    assert "redis" in gateway["depends_on"]
    assert gateway["environment"]["AVN_API_KEYS_FILE"].startswith("/run/secrets/avn/")
    assert any(volume["target"] == "/run/secrets/avn" and volume.get("read_only") for volume in _volumes(gateway))


def test_the_gateway_is_published_on_loopback_unless_told_otherwise() -> None:
    services = resolved("cpu")["services"]
    assert [port["host_ip"] for port in _ports(services["gateway"])] == ["127.0.0.1", "127.0.0.1"]
    assert [name for name, service in services.items() if "ports" in service] == ["gateway"]  # nothing else
    exposed = resolved("cpu", AVN_PUBLISH_ADDRESS="0.0.0.0")["services"]["gateway"]
    assert [port["host_ip"] for port in _ports(exposed)] == ["0.0.0.0", "0.0.0.0"]


def test_every_container_has_a_memory_limit_and_the_gateway_time_to_drain() -> None:
    """Memory limits (a runaway container is killed, not the host), and a grace period between
    SIGTERM and SIGKILL longer than the gateway's drain, with time left to stop its servers."""
    services = resolved("cpu")["services"]
    limits = {name: _bytes(services[name]["mem_limit"]) for name in ("redis", "torchserve", "gateway")}
    assert limits["redis"] > _bytes("1g") and limits["gateway"] >= _bytes("2g") and limits["torchserve"] >= _bytes("4g")
    gateway = services["gateway"]
    drain_s = float(gateway["environment"]["AVN_DRAIN_S"])
    assert _seconds(gateway["stop_grace_period"]) >= drain_s + 5
    assert _bytes(resolved("cpu", AVN_GATEWAY_MEMORY="6g")["services"]["gateway"]["mem_limit"]) == _bytes("6g")


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_the_torchserve_container_writes_a_hardened_config(profile: str, tmp_path: Path) -> None:
    """The container's own start-up script, run here: token authorisation on, models from the store
    only, the REST and metrics APIs on loopback, only the gRPC APIs the gateway calls exposed."""
    torchserve = resolved(profile)["services"]["torchserve" if profile == "cpu" else "torchserve-gpu"]
    script = torchserve["command"][-1].split("<<'PY'\n", 1)[1].split("PY\n", 1)[0]
    environment = {**os.environ, **{k: str(v) for k, v in torchserve["environment"].items()}, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=environment, check=True)
    written = dict(line.split("=", 1) for line in (tmp_path / "config.properties").read_text().splitlines())
    assert written["disable_token_authorization"] == "false" and written["enable_model_api"] == "false"
    assert written["allowed_urls"] == "file:///model_store/[^/]+"
    assert all(written[api].startswith("http://127.0.0.1:") for api in ("management_address", "metrics_address"))
    assert written["inference_address"].startswith("http://127.0.0.1:")
    assert sorted(torchserve["expose"]) == [written["grpc_inference_port"], written["grpc_management_port"]]


def test_environment_variables_reach_the_resolved_file() -> None:
    services = resolved("gpu", AVN_WORKERS_STAGING="4", AVN_GPU_COUNT="2", AVN_GATEWAY_REPLICAS="3")["services"]
    assert services["torchserve-gpu"]["environment"]["AVN_WORKERS_STAGING"] == "4"
    assert str(services["torchserve-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["count"]) == "2"
    assert services["gateway"]["deploy"]["replicas"] == 3


def test_redis_requires_the_password_the_gateway_is_given_and_values_are_signed() -> None:
    services = resolved("cpu")["services"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == SECRETS["AVN_REDIS_PASSWORD"]
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == SECRETS["AVN_REDIS_PASSWORD"]  # the health check
    gateway = services["gateway"]["environment"]
    assert gateway["AVN_REDIS_PASSWORD"] == SECRETS["AVN_REDIS_PASSWORD"]
    assert gateway["AVN_CACHE_SECRET"] == SECRETS["AVN_CACHE_SECRET"]
    for missing in SECRETS:  # secure by default: no password, no start
        run = compose_config(
            ROOT / "docker-compose.yml", "cpu", with_secrets=False, **{k: v for k, v in SECRETS.items() if k != missing}
        )
        assert run.returncode != 0 and missing in run.stderr


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator bites: an unknown key in a service is refused with its name in the message."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        (ROOT / "docker-compose.yml").read_text().replace("  gateway:\n", "  gateway:\n    colour: blue\n", 1)
    )
    run = compose_config(broken, "cpu")
    assert run.returncode != 0 and "colour" in run.stderr


def _volumes(service: dict) -> list[dict]:
    """Compose v1 prints short volume strings, v2 long mappings: give both as mappings."""
    out = []
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            volume = {"source": source, "target": target, "read_only": mode == ["ro"]}
        out.append(volume)
    return out


def _ports(service: dict) -> list[dict]:
    """Compose v1 prints `host_ip:published:target/protocol` strings, v2 long mappings: give both as mappings."""
    out = []
    for port in service["ports"]:
        if isinstance(port, str):
            *host, published, target = port.split("/")[0].split(":")
            port = {"host_ip": ":".join(host) or None, "published": published, "target": target}
        out.append(port)
    return out


def _bytes(limit: str | int) -> int:
    """A Compose memory size ("1536m", "4g", or bytes) in bytes."""
    text = str(limit).strip().lower().removesuffix("b")
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def _seconds(duration: str | int | float) -> float:
    """A Compose duration ("30s", "1m30s") or a number of seconds (v2 prints nanoseconds as "30s")."""
    if isinstance(duration, int | float):
        return float(duration)
    total, number = 0.0, ""
    for char in duration:
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
    return total
