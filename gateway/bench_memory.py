"""Peak resident memory (RSS) during one ``avn bench`` configuration, sampled with psutil.

A thread samples every ``interval_s`` while the configuration runs and keeps the peaks of:

* ``gateway``: this process — the gateway (gRPC server, pipeline, and for in-process and naive the
  models), and also the bench's clients and the payloads they send, which are in the same process;
  ``gateway_before`` is its RSS when the configuration started, so the growth can be read off;
* with TorchServe: ``torchserve_workers`` (the sum over the Python model workers, sampled at the
  same instant), ``torchserve_worker_max`` (the largest single worker) and ``torchserve_frontend``
  (the Java frontend).

RSS counts shared pages (libtorch) in every process that maps them, so the workers' sum is an
upper bound of what they take together. Sampling can miss a peak shorter than the interval.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import psutil

MB = 1024 * 1024
DEFAULT_INTERVAL_S = 0.05
WORKER_MARK = "model_service_worker"


class RssSampler:
    """Samples RSS peaks in a daemon thread between :meth:`start` and :meth:`stop` (or ``with``)."""

    def __init__(self, model_server_pid: int | None = None, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.gateway = psutil.Process()
        self.model_server = psutil.Process(model_server_pid) if model_server_pid else None
        self.interval_s = interval_s
        self.peaks_mb: dict[str, float] = {"gateway_before": self.gateway.memory_info().rss / MB}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop sampling; the peaks in MiB."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
        return dict(self.peaks_mb)

    def sample(self) -> None:
        self._keep("gateway", self.gateway.memory_info().rss / MB)
        if self.model_server is None:
            return
        workers, frontend = model_server_rss_mb(self.model_server)
        if workers:
            self._keep("torchserve_workers", sum(workers))
            self._keep("torchserve_worker_max", max(workers))
        if frontend:
            self._keep("torchserve_frontend", frontend)

    def _keep(self, name: str, value_mb: float) -> None:
        self.peaks_mb[name] = max(value_mb, self.peaks_mb.get(name, 0.0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def model_server_rss_mb(root: psutil.Process) -> tuple[list[float], float]:
    """RSS of each model worker under ``root`` (the TorchServe launcher), and of its Java frontend."""
    workers, frontend = [], 0.0
    for process in _tree(root):
        try:
            command, name = " ".join(process.cmdline()), process.name().lower()
            rss = process.memory_info().rss / MB
        except psutil.Error:  # a process that ended between listing and reading
            continue
        if WORKER_MARK in command:
            workers.append(rss)
        elif "java" in name:
            frontend = max(frontend, rss)
    return workers, frontend


def _tree(root: psutil.Process) -> Iterable[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
