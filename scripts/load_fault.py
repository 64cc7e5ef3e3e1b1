"""Load and fault run of the gateway on loopback (issue #11 deliverable 7, in part): prints figures,
and exits 1 when a count is wrong (errors, 5xx, a failed request during a Redis outage, the
service down after the fuzz). The pass/fail rules are on counts, never on timings.

It starts what it tests: a redis-server with a password, and ``python -m gateway.service`` (the
embedded backend over ``--store``, or a store of tiny untrained models it builds) with an API key,
Redis as its cache, and the values signed. Then, one after the other:

1. load: ``--clients`` threads for ``--seconds``, alternating REST and gRPC diagnoses of a few
   phantom radiographs (cache hits and misses both), every answer counted by outcome; the
   gateway's resident memory sampled 24 times: flat means it grows by no more than 48 MiB over the
   second half (after warm-up), else a load of a minute or more fails;
2. Redis killed in the middle of a second load phase and started again: no request may fail
   (the cache degrades to none and comes back);
3. fuzz: ``--fuzz`` mutations of a DICOM and a PNG (bit flips, truncations, inserted bytes,
   header fields overwritten) over REST and gRPC: every answer must be a 4xx/200, never a 5xx,
   and the gateway must still be ready afterwards;
4. worker: a second gateway, over a real TorchServe (the same store, token authorisation off on
   loopback, no result cache so that every request reaches the models), under load from
   ``--clients`` threads; one TorchServe worker (the ``model_service_worker`` process serving the
   detector, found through the management API and psutil) is killed with SIGKILL. Only the requests
   in flight may fail — at most one per client — and only with 503 / UNAVAILABLE; TorchServe starts
   the worker again, the time until it is READY (and the gateway ready) is measured, and requests
   succeed again afterwards.

``--phases`` picks some of them (``load,redis,fuzz`` for the embedded backend alone). Schemathesis
over the OpenAPI document is ``tests/test_schemathesis.py``.

    python scripts/load_fault.py --clients 8 --seconds 120     # the issue's figures
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from gateway_support import phantom_dicom, phantom_png, write_tiny_store  # noqa: E402

from avn.pipeline.backend import MODELS  # noqa: E402
from avn.serving.torchserve import LOOPBACK, TorchServe, free_ports  # noqa: E402
from gateway.auth import KeysFile  # noqa: E402
from gateway.proto import load  # noqa: E402

STUBS = load()
pb = STUBS.messages
REDIS_PASSWORD = "load-fault-redis-password"
CACHE_SECRET = "load-fault-cache-secret-0123456789"
RPC_TIMEOUT_S = 60
READY_WITHIN_S = 180
OK = ("200", "grpc OK")
UNAVAILABLE = ("503", "grpc UNAVAILABLE")
KILLED_MODEL = "detection"  # every diagnosis calls the detector first
WORKER_BACK_WITHIN_S = 180
PHASES = ("load", "redis", "fuzz", "worker")


@dataclass
class Tally:
    """Answers by outcome ("200", "503", "grpc OK", "grpc UNAVAILABLE", "refused: …")."""

    outcomes: collections.Counter = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, answered, outcome), monotonic

    def add(self, outcome: str, sent: float | None = None) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            self.answers.append((sent if sent is not None else time.monotonic(), time.monotonic(), outcome))

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def failures(self) -> int:
        return sum(count for outcome, count in self.outcomes.items() if outcome not in OK)

    def server_errors(self) -> int:
        bad = ("5", "grpc INTERNAL", "grpc UNKNOWN", "grpc UNAVAILABLE", "grpc DEADLINE_EXCEEDED", "no answer")
        return sum(count for outcome, count in self.outcomes.items() if outcome.startswith(bad))


# ---------------------------------------------------------------- the services


class Redis:
    def __init__(self, work: Path) -> None:
        self.port = free_ports(1)[0]
        self.work = work
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        command = [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", LOOPBACK]
        command += ["--save", "", "--appendonly", "no", "--requirepass", REDIS_PASSWORD]
        self.process = subprocess.Popen(command, cwd=self.work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class Gateway:
    """``python -m gateway.service``: the embedded backend with Redis as its cache, or (``variables``)
    whatever the ``AVN_*`` variables given say, e.g. the TorchServe backend without a cache."""

    def __init__(self, store: Path, work: Path, redis: Redis | None, keys_file: Path, **variables: str) -> None:
        self.grpc_port, self.rest_port = free_ports(2)
        self.log = work / f"gateway-{self.rest_port}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("AVN_")}
        environment |= {
            "AVN_BACKEND": "embedded",
            "AVN_MODEL_STORE": str(store),
            "AVN_GRPC_PORT": str(self.grpc_port),
            "AVN_REST_PORT": str(self.rest_port),
            "AVN_CASE_BANK": "",
            "AVN_API_KEYS_FILE": str(keys_file),
            "AVN_AUDIT_LOG_FILE": str(work / f"audit-{self.rest_port}.jsonl"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")]),
        }
        if redis is not None:
            environment |= {
                "AVN_REDIS_URL": redis.url,
                "AVN_REDIS_PASSWORD": REDIS_PASSWORD,
                "AVN_CACHE_SECRET": CACHE_SECRET,
                "AVN_REDIS_RETRY_S": "0.5",
            }
        environment |= variables
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.service"], env=environment, cwd=work, stdout=output, stderr=output
            )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.rest_port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the gateway did not become ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def wait_for_port(port: int, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


# ---------------------------------------------------------------- the clients


def rest_call(gateway: Gateway, key: str, body: bytes) -> str:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/octet-stream"}
    request = urllib.request.Request(f"{gateway.url}/v1/diagnose", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S) as response:
            response.read()
            return str(response.status)
    except urllib.error.HTTPError as error:
        return str(error.code)
    except OSError as error:
        return f"no answer ({type(error).__name__})"


def grpc_call(stub, key: str, body: bytes) -> str:  # noqa: ANN001
    try:
        stub.Diagnose(
            pb.DiagnoseRequest(image=body), timeout=RPC_TIMEOUT_S, metadata=[("authorization", f"Bearer {key}")]
        )
        return "grpc OK"
    except grpc.RpcError as error:
        return f"grpc {error.code().name}"


MEMORY_SAMPLES = 24  # resident-memory samples over the load phase
# Flat memory: over the second half of the load (after warm-up: first models calls, pools, caches
# filled), the gateway's resident memory may rise by no more than this (allocator noise).
FLAT_MEMORY_GROWTH_MIB = 48.0
FLAT_MEMORY_MIN_SECONDS = 60.0  # a shorter load is warm-up throughout: its memory is reported, not judged


class MemorySampler:
    """The gateway's resident memory every ``every_s`` seconds in a background thread."""

    def __init__(self, gateway: Gateway, every_s: float) -> None:
        self.gateway, self.every_s = gateway, max(every_s, 0.5)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        self.samples.append((time.monotonic() - self._started, self.gateway.rss_mib()))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def figures(self) -> dict:
        """The samples, and the growth and slope over the second half (least squares, MiB/min)."""
        if len(self.samples) < 4:
            return {"rss_mib_samples": [round(m, 1) for _, m in self.samples]}
        times, mib = (np.array(column) for column in zip(*self.samples, strict=True))
        half = times >= times[-1] / 2
        slope = float(np.polyfit(times[half] / 60.0, mib[half], 1)[0]) if half.sum() >= 2 else float("nan")
        return {
            "rss_mib_samples": [round(float(m), 1) for m in mib],
            "rss_mib_peak": round(float(mib.max()), 1),
            "rss_mib_second_half_growth": round(float(mib[half][-1] - mib[half][0]), 1),
            "rss_mib_per_min_second_half": round(slope, 1),
        }


def load_phase(
    gateway: Gateway, key: str, images: list[bytes], clients: int, seconds: float, stop: threading.Event | None = None
) -> Tally:
    """``clients`` threads for ``seconds`` (or until ``stop`` is set, when given)."""
    tally = Tally()
    stop_at = time.monotonic() + seconds
    stop = stop or threading.Event()

    def client(index: int) -> None:
        rng = random.Random(index)
        with grpc.insecure_channel(f"{LOOPBACK}:{gateway.grpc_port}") as channel:
            stub = STUBS.services.DiagnosisStub(channel)
            turn = index
            while time.monotonic() < stop_at and not stop.is_set():
                body = rng.choice(images)
                sent = time.monotonic()
                tally.add(rest_call(gateway, key, body) if turn % 2 == 0 else grpc_call(stub, key, body), sent)
                turn += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


# ---------------------------------------------------------------- fuzz


def mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        mutated = bytearray(data)
        kind = rng.choice(("flip", "truncate", "insert", "overwrite"))
        if kind == "flip":
            for _ in range(rng.randint(1, 64)):
                position = rng.randrange(len(mutated))
                mutated[position] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            mutated = mutated[: rng.randrange(1, len(mutated))]
        elif kind == "insert":
            position = rng.randrange(len(mutated))
            mutated[position:position] = rng.randbytes(rng.randint(1, 256))
        else:  # the header region, where sizes and field lengths live
            position = rng.randrange(min(len(mutated), 1024))
            mutated[position : position + 8] = rng.randbytes(8)
        out.append(bytes(mutated))
    return out


def fuzz_phase(gateway: Gateway, key: str, seeds: list[bytes], count: int) -> Tally:
    tally = Tally()
    with grpc.insecure_channel(f"{LOOPBACK}:{gateway.grpc_port}") as channel:
        stub = STUBS.services.DiagnosisStub(channel)
        for index, data in enumerate(seeds):
            for number, mutated in enumerate(mutations(data, count // len(seeds), seed=index)):
                tally.add(rest_call(gateway, key, mutated) if number % 2 == 0 else grpc_call(stub, key, mutated))
    return tally


# ---------------------------------------------------------------- a TorchServe worker killed


def model_worker(server: TorchServe, model: str) -> psutil.Process:
    """The ``model_service_worker`` process serving ``model``: its pid from TorchServe's management
    API, checked with psutil to be a worker process in this TorchServe's own process tree."""
    pids = {int(worker["pid"]) for worker in (server.describe(model) or {}).get("workers", []) if worker.get("pid")}
    workers = []
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if any("model_service_worker" in part for part in process.cmdline()):
                workers.append(process)
        except psutil.Error:
            continue
    if not workers:
        raise SystemExit(f"no model_service_worker process under TorchServe:\n{server.log_tail()}")
    return next((process for process in workers if process.pid in pids), workers[0])


def worker_back(server: TorchServe, model: str, killed_pid: int) -> bool:
    """A READY worker for ``model`` that is not the killed one."""
    workers = (server.describe(model) or {}).get("workers", [])
    return any(worker.get("status") == "READY" and int(worker.get("pid") or -1) != killed_pid for worker in workers)


def worker_phase(
    server: TorchServe, gateway: Gateway, key: str, images: list[bytes], clients: int, seconds: float
) -> dict:
    """Load for ``seconds / 3``, kill the detector's worker, wait for TorchServe to start it again
    and the gateway to be ready, then load for ``2 * seconds / 3`` more."""
    stop = threading.Event()
    times: dict[str, float] = {}

    def fault() -> None:
        try:
            time.sleep(seconds / 3)
            worker = model_worker(server, KILLED_MODEL)
            times["killed_pid"] = worker.pid
            times["killed_at"] = time.monotonic()
            worker.kill()
            deadline = times["killed_at"] + WORKER_BACK_WITHIN_S
            while not worker_back(server, KILLED_MODEL, worker.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            times["worker_back_at"] = time.monotonic()
            while not gateway.ready() and time.monotonic() < deadline:
                time.sleep(0.1)
            times["ready_at"] = time.monotonic()
            time.sleep(2 * seconds / 3)
        finally:
            stop.set()

    faulter = threading.Thread(target=fault)
    faulter.start()
    tally = load_phase(gateway, key, images, clients, WORKER_BACK_WITHIN_S + 2 * seconds, stop)
    faulter.join()
    killed_at = times.get("killed_at", float("inf"))
    ready_at = times.get("ready_at", float("inf"))
    failed = [(sent, answered, outcome) for sent, answered, outcome in tally.answers if outcome not in OK]
    return {
        "requests": tally.total,
        "outcomes": dict(tally.outcomes),
        "failed": len(failed),
        "failed_not_503": sum(outcome not in UNAVAILABLE for _, _, outcome in failed),
        "failed_not_in_flight_at_kill": sum(not (sent <= killed_at <= answered) for sent, answered, _ in failed),
        "in_flight_at_kill": sum(sent <= killed_at <= answered for sent, answered, _ in tally.answers),
        "ok_after_recovery": sum(sent >= ready_at and outcome in OK for sent, _, outcome in tally.answers),
        "killed_model": KILLED_MODEL,
        "killed_pid": times.get("killed_pid"),
        "worker_back": worker_back(server, KILLED_MODEL, times.get("killed_pid", -1)),
        "worker_back_s": round(times.get("worker_back_at", float("nan")) - killed_at, 2),
        "gateway_ready_s": round(ready_at - killed_at, 2),
        "ready_after": gateway.ready(),
    }


# ---------------------------------------------------------------- the run


def embedded_phases(arguments: argparse.Namespace, phases: set[str], work: Path, store: Path, images: list[bytes]):
    """load, redis and fuzz against one gateway over the embedded backend, with Redis as its cache."""
    keys_file = work / "api_keys.json"
    key = KeysFile(keys_file).add("load")
    redis = Redis(work)
    redis.start()
    gateway = Gateway(store, work, redis, keys_file)
    figures: dict = {}
    try:
        gateway.wait_ready()
        if "load" in phases:
            memory_before = gateway.rss_mib()
            started = time.monotonic()
            with MemorySampler(gateway, arguments.seconds / MEMORY_SAMPLES) as memory:
                load = load_phase(gateway, key, images, arguments.clients, arguments.seconds)
            figures["load"] = {
                "seconds": arguments.seconds,
                "requests": load.total,
                "per_second": round(load.total / (time.monotonic() - started), 2),
                "failed": load.failures(),
                "outcomes": dict(load.outcomes),
                "rss_mib_before": round(memory_before, 1),
                "rss_mib_after": round(gateway.rss_mib(), 1),
                **memory.figures(),
            }

        if "redis" in phases:
            outage_s = max(2.0, arguments.seconds / 4)
            killer = threading.Timer(outage_s / 3, redis.kill)
            restarter = threading.Timer(2 * outage_s / 3, redis.start)
            killer.start()
            restarter.start()
            outage = load_phase(gateway, key, images, arguments.clients, outage_s)
            killer.join()
            restarter.join()
            figures["redis_outage"] = {
                "requests": outage.total,
                "failed": outage.failures(),
                "outcomes": dict(outage.outcomes),
            }

        if "fuzz" in phases:
            fuzz = fuzz_phase(gateway, key, [images[0], images[-1]], arguments.fuzz)
            figures["fuzz"] = {
                "requests": fuzz.total,
                "server_errors": fuzz.server_errors(),
                "outcomes": dict(fuzz.outcomes),
                "ready_after": gateway.ready(),
            }
    finally:
        figures["exit_code"] = gateway.stop() if gateway.process.poll() is None else gateway.process.returncode
        redis.kill()
    return figures


def torchserve_phase(arguments: argparse.Namespace, work: Path, store: Path, images: list[bytes]) -> dict:
    """The worker phase: a TorchServe over ``store`` and a gateway over it, without a result cache."""
    keys_file = work / "api_keys_torchserve.json"
    key = KeysFile(keys_file).add("load-torchserve")
    server = TorchServe(store, work / "ts", disable_token_auth=True, gpus=0, system_metrics=False)
    server.start()
    gateway = None
    try:
        server.wait_until_ready(MODELS, timeout_s=READY_WITHIN_S)
        gateway = Gateway(
            store,
            work,
            None,
            keys_file,
            AVN_BACKEND="torchserve",
            AVN_TORCHSERVE_GRPC=f"{LOOPBACK}:{server.ports.grpc_inference}",
            AVN_TORCHSERVE_MANAGEMENT=f"{LOOPBACK}:{server.ports.grpc_management}",
            AVN_CACHE_ENABLED="false",
        )
        gateway.wait_ready()
        figures = worker_phase(server, gateway, key, images, arguments.clients, arguments.worker_seconds)
        figures["exit_code"] = gateway.stop()
        return figures
    finally:
        if gateway is not None and gateway.process.poll() is None:
            gateway.process.kill()
        server.stop()


def problems_in(figures: dict, clients: int) -> list[str]:
    problems = []
    if figures.get("load", {}).get("failed"):
        problems.append(f"{figures['load']['failed']} requests failed under load")
    growth = figures.get("load", {}).get("rss_mib_second_half_growth")
    judged = figures.get("load", {}).get("seconds", 0) >= FLAT_MEMORY_MIN_SECONDS
    if judged and growth is not None and growth > FLAT_MEMORY_GROWTH_MIB:
        problems.append(f"the gateway's memory grew {growth} MiB over the second half of the load (not flat)")
    if figures.get("redis_outage", {}).get("failed"):
        problems.append(f"{figures['redis_outage']['failed']} requests failed while Redis was down")
    if "fuzz" in figures and (figures["fuzz"]["server_errors"] or not figures["fuzz"]["ready_after"]):
        problems.append("the fuzz got server errors or left the gateway not ready")
    if figures.get("exit_code", 0) != 0:
        problems.append(f"the gateway exited {figures['exit_code']} on SIGTERM")
    worker = figures.get("worker")
    if worker is not None:
        if worker["failed_not_503"]:
            problems.append(f"{worker['failed_not_503']} requests failed otherwise than 503 / UNAVAILABLE")
        if worker["failed_not_in_flight_at_kill"] or worker["failed"] > clients:
            problems.append(f"{worker['failed']} requests failed, not only those in flight at the kill")
        if not (worker["worker_back"] and worker["ready_after"] and worker["ok_after_recovery"]):
            problems.append("the worker did not come back, or the gateway did not serve again after it")
        if worker["exit_code"] != 0:
            problems.append(f"the TorchServe gateway exited {worker['exit_code']} on SIGTERM")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="model store (default: tiny untrained models built here)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--worker-seconds", type=float, default=30.0, help="load around the worker kill")
    parser.add_argument("--fuzz", type=int, default=200, help="mutated files sent")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {','.join(PHASES)}")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    phases = set(arguments.phases.split(","))
    if not phases or not phases <= set(PHASES):
        parser.error(f"--phases: some of {','.join(PHASES)}")

    work = Path(tempfile.mkdtemp(prefix="avn-load-"))
    store = arguments.store or write_tiny_store(work)
    images = [phantom_png(work, index).read_bytes() for index in range(3)] + [phantom_dicom(work, 3).read_bytes()]
    figures: dict = {}
    if phases & {"load", "redis", "fuzz"}:
        figures |= embedded_phases(arguments, phases, work, store, images)
    if "worker" in phases:
        figures["worker"] = torchserve_phase(arguments, work, store, images)
    print(json.dumps(figures, indent=2))
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2))
    problems = problems_in(figures, arguments.clients)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
