"""Real servers shared by the test modules: a TorchServe over random-init archives (one per test
session) and redis-server processes on free loopback ports.

The TorchServe runs the five archives built from untrained checkpoints (no training in the tests),
on free loopback ports with token authorisation off (allowed on loopback only), CPU only, and is
stopped at the end of the session. ``tests/test_torchserve.py`` and the gateway tests share it:
starting one takes about half a minute on two cores.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from gateway_support import ApiKey, untrained_detector, write_api_key

from avn.models import TASKS, build_classifier, save_checkpoint
from avn.models.acceleration import INT8
from avn.optimisation import Optimisation, optimised_checkpoint
from avn.serving.torchserve import LOOPBACK, TorchServe, free_ports
from avn.store import ServingConfig, build_store

MODEL_VERSION = "0.0.1-test"
# A long batch window on the view model makes concurrent requests share one forward pass
# (test_torchserve checks the batching).
TEST_SERVING = {"view": ServingConfig(batch_size=8, max_batch_delay_ms=400)}
REDIS_START_TIMEOUT_S = 10.0


def build_test_store(root: Path, version: str = MODEL_VERSION) -> Path:
    """``root/model_store`` with the five archives from random-init checkpoints of ``version``."""
    torch.manual_seed(0)
    for task in TASKS:
        # Untrained SSD scores sit near chance (ties): no score cut and a wide top-k keep boxes on the
        # image itself, not only on the letterbox padding.
        model = untrained_detector() if task == "detection" else build_classifier(task)
        save_checkpoint(
            root / "run" / task / "model.pt", model, task, {"version": version, "training_data_hash": "test"}
        )
    # The notes archive is served in int8, as build-store serves it on CPUs that run int8 fastest:
    # TorchServe must load and answer with the quantised weights the checkpoint carries.
    served_notes = root / "served-notes.pt"
    optimised_checkpoint(root / "run" / "notes" / "model.pt", served_notes, Optimisation(None, forms=(INT8,)), {})
    served_notes.replace(root / "run" / "notes" / "model.pt")
    build_store(root / "run", root / "model_store", serving=TEST_SERVING)
    return root / "model_store"


@pytest.fixture(scope="session")
def api_key(tmp_path_factory: pytest.TempPathFactory) -> ApiKey:
    """A keys file with one key (id ``test``) for the servers, and the key for the clients."""
    return write_api_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def torchserve_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """A ready TorchServe with the five test archives; stopped at the end of the session."""
    root = tmp_path_factory.mktemp("torchserve")
    server = TorchServe(build_test_store(root), root / "ts", disable_token_auth=True, gpus=0, system_metrics=False)
    server.start()
    try:
        server.wait_until_ready(TASKS, timeout_s=150)
        yield server
    finally:
        server.stop()


class RedisServer:
    """One ``redis-server`` process on a loopback port, without persistence; can be stopped and
    started again on the same port (an outage in the middle of a run). ``password``: its
    ``requirepass``."""

    def __init__(
        self,
        work_dir: Path,
        password: str | None = None,
        acl: tuple[str, ...] = (),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.port = free_ports(1)[0]
        self.work_dir = work_dir
        self.password = password
        self.acl = acl  # extra --user rules, e.g. ("default off", "avn on >secret ~avn:* +get")
        self.tls = tls  # (certificate, key): TLS only, no plain port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{LOOPBACK}:{self.port}/0"

    def start(self) -> RedisServer:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (make system-deps installs it)")
        command = [executable, "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
        if self.tls:
            certificate, key = self.tls
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(certificate)]
            command += ["--tls-key-file", str(key), "--tls-auth-clients", "no"]
        else:
            command += ["--port", str(self.port)]
        if self.password:
            command += ["--requirepass", self.password]
        for rule in self.acl:
            command += ["--user", *rule.split()]
        with open(self.work_dir / "redis.out", "ab") as output:
            self.process = subprocess.Popen(command, cwd=self.work_dir, stdout=output, stderr=subprocess.STDOUT)
        self._wait_until_listening()
        return self

    def stop(self) -> None:
        """Kill it outright, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(
                    f"redis-server exited with {self.process.returncode}: {(self.work_dir / 'redis.out').read_text()}"
                )
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        pytest.fail(f"redis-server did not listen on port {self.port} within {REDIS_START_TIMEOUT_S} s")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test."""
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
