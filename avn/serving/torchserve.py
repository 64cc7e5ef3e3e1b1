"""Run a TorchServe over a model store: write its ``config.properties``, start it, wait until every
model has a ready worker, and stop it.

Used by the tests (a real server on free loopback ports) and by local runs; deployments write the
same properties through :func:`write_config`. Each server gets a private scratch directory as its
TMPDIR: TorchServe 0.12 keeps its pid file (``.model_server.pid``), its worker sockets
(``.ts.sock.<port>``) and the unpacked archives there, so two servers on one machine — other
test runs included — never see each other's.

Token authorisation is TorchServe's default and stays on; ``disable_token_auth=True`` is accepted
only when every address is loopback (tests, a single-host gateway).

:func:`write_config` pins what would otherwise be left to the installed version's defaults: models
are loaded from the store only (``allowed_urls`` matches nothing outside it; registering or
deleting models through the management API is off, ``enable_model_api=false``; environment
variables cannot override the file), and only the gRPC APIs the gateway calls (inference, and
management for model cards and scaling) listen on ``host`` — the REST inference and management
APIs and the metrics API stay on loopback whatever ``host`` is.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a float32 3000×3000 radiograph is 36 MB; TorchServe's default is 6.5 MB
READY = "READY"

# One worker per model by default: the five models share the machine's cores.
WORKERS_SHARING_CORES = 5


class TorchServeError(RuntimeError):
    """TorchServe could not be configured, started, made ready or stopped."""


class InsecureConfigError(TorchServeError):
    """Token authorisation disabled on an address other than loopback."""


@dataclass(frozen=True)
class Ports:
    """The five TCP ports a TorchServe listens on, plus the first port of its worker range."""

    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int
    worker_base: int


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_loopback_ports() -> Ports:
    return Ports(*free_ports(6))


def write_config(
    path: Path,
    model_store: Path,
    ports: Ports,
    host: str = LOOPBACK,
    disable_token_auth: bool = False,
    load_models: str = "all",
    gpus: int | None = None,
    system_metrics: bool = True,
    extra: Mapping[str, str] | None = None,
    network_guarded: bool = False,
) -> Path:
    """Write a TorchServe ``config.properties``; returns ``path``.

    ``host``: the address of the gRPC inference and management APIs (``0.0.0.0`` in a container
    the gateway calls from another); the REST APIs and metrics stay on loopback.
    ``gpus=0`` pins a CPU-only server; ``None`` lets TorchServe count the GPUs.
    ``system_metrics=False`` stops the once-a-minute system-metrics subprocess (tests, small hosts).
    ``network_guarded``: the gRPC ports are reachable only through a network policy that admits the
    gateway alone (Kubernetes NetworkPolicy, deploy/k8s): the one case where token authorisation may
    be off away from loopback, since TorchServe's tokens are random per server and pods cannot share
    the key file.
    """
    if disable_token_auth and not is_loopback(host) and not network_guarded:
        raise InsecureConfigError(
            f"token authorisation may only be disabled on loopback, not on {host} (or behind a network "
            "policy that admits the gateway alone: network_guarded=True)"
        )
    properties = {
        # Nobody outside the container needs these: loopback, whatever `host` is.
        "inference_address": f"http://{LOOPBACK}:{ports.inference}",
        "management_address": f"http://{LOOPBACK}:{ports.management}",
        "metrics_address": f"http://{LOOPBACK}:{ports.metrics}",
        "grpc_inference_address": host,
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_address": host,
        "grpc_management_port": str(ports.grpc_management),
        "initial_worker_port": str(ports.worker_base),
        "model_store": str(model_store),
        "load_models": load_models,
        "disable_token_authorization": str(disable_token_auth).lower(),
        # Models come from the store and nowhere else: no URL outside it, no registration or deletion
        # through the management API, no TS_* variable overriding this file.
        "allowed_urls": store_url_pattern(model_store),
        "enable_model_api": "false",
        "enable_envvars_config": "false",
        # Dependencies come from the project's environment, never from pip at model load.
        "install_py_dep_per_model": "false",
        "cpu_launcher_enable": "false",
        "max_request_size": str(MAX_MESSAGE_BYTES),
        "max_response_size": str(MAX_MESSAGE_BYTES),
        "disable_system_metrics": str(not system_metrics).lower(),
        "default_workers_per_model": "1",
    }
    if gpus is not None:
        properties["number_of_gpu"] = str(gpus)
    properties.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    return path


def store_url_pattern(model_store: Path) -> str:
    """TorchServe's ``allowed_urls`` (a regular expression) matching ``file://`` URLs inside the store only."""
    return f"file://{re.escape(str(Path(model_store)))}/[^/]+"


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (a host name other than localhost is not trusted to be one)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TorchServe:
    """One TorchServe process tree over ``model_store``; use as a context manager or start/stop.

    Logs go to ``work_dir/logs``; the launcher's own output to ``work_dir/torchserve.out``.
    """

    def __init__(
        self,
        model_store: Path,
        work_dir: Path,
        ports: Ports | None = None,
        disable_token_auth: bool = False,
        gpus: int | None = None,
        system_metrics: bool = True,
        torch_threads: int | None = None,
        open_inference: bool = False,
    ) -> None:
        self.model_store = Path(model_store)
        # TorchServe's gRPC inference port then speaks the Open Inference Protocol (KServe v2) in
        # place of its own inference API (TS_OPEN_INFERENCE_PROTOCOL=oip): the `oip` backend's server
        self.open_inference = open_inference
        self.torch_threads = torch_threads
        self.work_dir = Path(work_dir)
        self.ports = ports or free_loopback_ports()
        self.config_path = write_config(
            self.work_dir / "config.properties",
            self.model_store,
            self.ports,
            disable_token_auth=disable_token_auth,
            gpus=gpus,
            system_metrics=system_metrics,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._scratch: Path | None = None

    @property
    def inference_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.management}"

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    def start(self) -> TorchServe:
        """Launch ``torchserve --start --foreground --ncs`` in its own process group."""
        if self.process is not None:
            raise TorchServeError("this TorchServe is already started")
        # Short path under the system temp dir: worker socket paths must stay below 108 bytes.
        self._scratch = Path(tempfile.mkdtemp(prefix="avn-ts-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        environment = {
            **os.environ,
            "TMPDIR": str(self._scratch),  # the launcher's pid file
            "TEMP": str(self._scratch),  # java.io.tmpdir: worker sockets, unpacked archives
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            **worker_thread_environment(self.torch_threads),
            **({"TS_OPEN_INFERENCE_PROTOCOL": "oip"} if self.open_inference else {}),
        }
        command = [
            str(_torchserve_executable()),
            "--start",
            "--foreground",
            "--ncs",  # no config snapshots: every start reads exactly our config.properties
            "--ts-config", str(self.config_path),
            "--model-store", str(self.model_store),
        ]  # fmt: skip
        with open(self.work_dir / "torchserve.out", "ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=self.work_dir,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of our own: stop() ends exactly this tree
            )
        return self

    def wait_until_ready(self, models: Iterable[str], timeout_s: float = 120.0) -> dict[str, dict]:
        """Poll ``GET /models/<name>`` until every model has a READY worker; returns the descriptions."""
        pending = set(models)
        described: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            self._raise_if_exited()
            for name in sorted(pending):
                description = self.describe(name)
                if description and any(worker.get("status") == READY for worker in description.get("workers", [])):
                    described[name] = description
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise TorchServeError(f"models not ready after {timeout_s:.0f} s: {sorted(pending)}\n{self.log_tail()}")
            if pending:
                time.sleep(0.5)
        return described

    def describe(self, name: str, customized: bool = False) -> dict | None:
        """The management API's description of one model, or None while it is not registered."""
        query = "?customized=true" if customized else ""
        try:
            with urllib.request.urlopen(f"{self.management_url}/models/{name}{query}", timeout=10) as response:
                answer = json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        return answer[0] if isinstance(answer, list) and answer else None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the process group (launcher, Java frontend, Python workers); SIGKILL what is
        left after ``timeout_s``. The Java frontend needs a few seconds to unload its models."""
        if self.process is None:
            return
        group = self.process.pid  # start_new_session made the launcher its group's leader
        try:
            _signal_group(group, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            # The launcher exits at once; the Java frontend and workers it leaves are ours too.
            while _group_alive(group) and time.monotonic() < deadline:
                self.process.poll()  # reap the launcher, or it would keep the group alive as a zombie
                time.sleep(0.1)
            if _group_alive(group):
                _signal_group(group, signal.SIGKILL)
            self.process.wait(timeout=10)
        finally:
            self.process = None
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    def log_tail(self, lines: int = 60) -> str:
        """The end of TorchServe's main log, for error messages."""
        for candidate in (self.log_dir / "ts_log.log", self.work_dir / "torchserve.out"):
            if candidate.is_file():
                return "\n".join(candidate.read_text(errors="replace").splitlines()[-lines:])
        return "(no TorchServe log yet)"

    def _raise_if_exited(self) -> None:
        if self.process is None:
            raise TorchServeError("TorchServe is not started")
        if self.process.poll() is not None:
            raise TorchServeError(f"TorchServe exited with {self.process.returncode}\n{self.log_tail()}")

    def __enter__(self) -> TorchServe:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def worker_thread_environment(torch_threads: int | None = None) -> dict[str, str]:
    """OMP/MKL thread counts for the model workers, unless the caller's environment sets them.

    Every worker is its own Python process, and PyTorch gives each one as many intra-op threads as
    the machine has cores. Five workers (one per model) on a small CPU machine then fight over the
    cores, and OpenMP's spinning threads make every forward pass many times slower (measured on 2
    cores: a 2-crop classifier call took 0.5–1.9 s instead of ~30 ms in-process). Sharing the cores
    among the workers avoids it; an explicit OMP_NUM_THREADS in the environment wins.
    """
    if "OMP_NUM_THREADS" in os.environ and torch_threads is None:
        return {}
    threads = torch_threads or max(1, (os.cpu_count() or 1) // WORKERS_SHARING_CORES)
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _torchserve_executable() -> Path:
    """The ``torchserve`` launcher next to the running Python: its workers then run this same
    interpreter, which has the ``avn`` package installed."""
    candidate = Path(sys.executable).parent / "torchserve"
    if candidate.is_file():
        return candidate
    raise TorchServeError(f"torchserve not found next to {sys.executable}; install torchserve")
