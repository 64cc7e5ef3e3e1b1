"""The gateway as its container runs it: ``python -m gateway.service`` in a subprocess, on free
loopback ports, the embedded backend over a tiny model store, configured by ``AVN_*`` variables
only. Shared by the tests of authentication over TLS, the audit log and graceful shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from avn.serving.torchserve import LOOPBACK, free_ports

ROOT = Path(__file__).resolve().parent.parent
READY_WITHIN_S = 120.0


class GatewayProcess:
    """One ``python -m gateway.service``; its output goes to ``work_dir/gateway.log``."""

    def __init__(self, store: Path, work_dir: Path, **variables: str) -> None:
        self.grpc_port, self.rest_port = free_ports(2)
        self.log = work_dir / "gateway.log"
        self.work_dir = work_dir
        self.environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AVN_", "OTEL_"))},
            "AVN_BACKEND": "embedded",
            "AVN_MODEL_STORE": str(store),
            "AVN_GRPC_PORT": str(self.grpc_port),
            "AVN_REST_PORT": str(self.rest_port),
            "AVN_CASE_BANK": "",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **variables,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def rest_url(self) -> str:
        scheme = "https" if self.environment.get("AVN_TLS_CERT_FILE") else "http"
        return f"{scheme}://{LOOPBACK}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def start(self, ready: Callable[[], bool] | None = None) -> GatewayProcess:
        """Start it and wait until ``ready()`` (default: plain-HTTP /readyz answers 200)."""
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.service"],
                env=self.environment,
                cwd=self.work_dir,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        ready = ready or self._plain_ready
        deadline = time.monotonic() + READY_WITHIN_S
        while not ready():
            assert self.process.poll() is None, f"the gateway exited with {self.process.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"not ready after {READY_WITHIN_S} s:\n{self.output()}"
            time.sleep(0.3)
        return self

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """SIGTERM, then kill if it is still there after a minute (a test failed half-way)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _plain_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.rest_port}/readyz", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
