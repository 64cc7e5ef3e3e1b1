"""``avn bench``: the gateway's throughput and latency over gRPC, three ways in one run.

N radiographs of a data set are sent to a real gRPC server on loopback by C concurrent clients,
with the result cache off (every request computes), for each of three configurations:

* ``torchserve`` — the production path: gateway → TorchServe's gRPC inference API;
* ``in-process`` — the same gateway with the models in its own process (``avn serve --embedded``);
* ``naive`` — the baseline a first script would be: in-process, eager fp32, every model called
  for one femoral head at a time and one model call at a time in the process (no batching of
  the two heads, no concurrent classifiers).

Each configuration gets a warm-up (not counted), then the timed run. Printed per configuration:
radiographs/s, p50/p95/p99 latency as the client saw it, the mean of each pipeline step as the
server measured it (from the result's timings), errors, and the ratios to the naive baseline.
``--json`` writes the same figures to a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from avn.pipeline.backend import Classification, Detections, ModelBackend, ModelInfo
from avn.pipeline.pipeline import Pipeline
from gateway.admission import DEFAULT_MAX_IN_FLIGHT, Admission
from gateway.auth import OpenAuthenticator
from gateway.grpc_server import MAX_MESSAGE_BYTES, BackgroundGrpcServer, pb
from gateway.proto import load

STEPS = ("decode", "detect", "crop", "classify", "fuse", "output", "total")
CONFIGURATIONS = ("torchserve", "in-process", "naive")
WARMUP_REQUESTS = 2
RPC_TIMEOUT_S = 300.0


class BenchError(RuntimeError):
    """The benchmark cannot run (no radiographs, no store, a server that would not start)."""


@dataclass
class BenchFigures:
    configuration: str
    radiographs: int
    concurrency: int
    seconds: float
    errors: int
    latencies_ms: list[float] = field(repr=False)
    step_means_ms: dict[str, float]

    @property
    def throughput(self) -> float:
        done = self.radiographs - self.errors
        return done / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict:
        document = asdict(self)
        document.pop("latencies_ms")
        document.update(
            radiographs_per_s=self.throughput,
            p50_ms=self.percentile_ms(50),
            p95_ms=self.percentile_ms(95),
            p99_ms=self.percentile_ms(99),
        )
        return document


# ---------------------------------------------------------------- inputs


def radiograph_payloads(data: Path, count: int) -> list[bytes]:
    """The bytes of ``count`` radiographs of a data set folder (its files repeated when it holds fewer)."""
    from avn.dataset.format import load_dataset  # noqa: PLC0415

    if not (data / "annotations.json").exists():
        raise BenchError(f"{data} is no data set (no annotations.json); build one with `avn phantom` or `make run`")
    files = [data / image.file_name for image in load_dataset(data).images]
    if not files:
        raise BenchError(f"{data} holds no radiographs")
    return [files[index % len(files)].read_bytes() for index in range(count)]


# ---------------------------------------------------------------- the naive baseline


class OneHeadAtATime:
    """A backend wrapper that calls every model for one crop at a time, one call at a time.

    The lock spans the whole process, as in a script that loops over heads and models; the
    pipeline's concurrent classifier calls therefore run one after the other.
    """

    def __init__(self, inner: ModelBackend) -> None:
        self.inner = inner
        self._lock = asyncio.Lock()

    async def detect(self, image: np.ndarray) -> Detections:
        async with self._lock:
            return await self.inner.detect(image)

    async def classify(self, model: str, crops: np.ndarray, cam_stage: str | None = None) -> Classification:
        answers = []
        for crop in crops:
            async with self._lock:
                answers.append(await self.inner.classify(model, crop[None], cam_stage))
        cams = [a.cams for a in answers]
        return Classification(
            labels=answers[0].labels,
            probabilities=np.concatenate([a.probabilities for a in answers]),
            cams=None if cams[0] is None else np.concatenate(cams),
            cam_labels=None
            if answers[0].cam_labels is None
            else tuple(label for a in answers for label in a.cam_labels),
        )

    async def models(self) -> list[ModelInfo]:
        return await self.inner.models()

    async def close(self) -> None:
        await self.inner.close()


# ---------------------------------------------------------------- measuring


def measure(configuration: str, pipeline: Pipeline, payloads: Sequence[bytes], concurrency: int) -> BenchFigures:
    """Serve ``pipeline`` over gRPC on loopback and time ``payloads`` sent by ``concurrency`` clients.
    The server is this process's own, on loopback: no API key (authentication off, as AVN_AUTH=off
    allows on loopback only), and an in-flight limit above the clients, so that none is refused."""
    admission = Admission(max_in_flight=max(DEFAULT_MAX_IN_FLIGHT, concurrency + WARMUP_REQUESTS))
    with BackgroundGrpcServer(pipeline, authenticator=OpenAuthenticator(), admission=admission) as server:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        with grpc.insecure_channel(server.target, options=options) as channel:
            stub = load().services.DiagnosisStub(channel)
            for payload in payloads[:WARMUP_REQUESTS]:
                stub.Diagnose(pb.DiagnoseRequest(image=payload), timeout=RPC_TIMEOUT_S)
            return _timed_run(configuration, stub, payloads, concurrency)


def _timed_run(configuration: str, stub, payloads: Sequence[bytes], concurrency: int) -> BenchFigures:
    next_index = iter(range(len(payloads)))
    take = threading.Lock()
    latencies: list[float] = []
    steps: dict[str, list[float]] = {step: [] for step in STEPS}
    errors = 0

    def client() -> None:
        nonlocal errors
        while True:
            with take:
                index = next(next_index, None)
            if index is None:
                return
            started = time.perf_counter()
            try:
                response = stub.Diagnose(pb.DiagnoseRequest(image=payloads[index]), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError:
                with take:
                    errors += 1
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            with take:
                latencies.append(elapsed_ms)
                for step in STEPS:
                    steps[step].append(getattr(response.timings, f"{step}_ms"))

    threads = [threading.Thread(target=client, name=f"bench-client-{i}") for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return BenchFigures(
        configuration=configuration,
        radiographs=len(payloads),
        concurrency=concurrency,
        seconds=seconds,
        errors=errors,
        latencies_ms=latencies,
        step_means_ms={step: float(np.mean(values)) if values else float("nan") for step, values in steps.items()},
    )


# ---------------------------------------------------------------- the three configurations


@contextlib.contextmanager
def torchserve_pipeline(store: Path, work_dir: Path, ready_timeout_s: float = 300.0) -> Iterator[Pipeline]:
    """A TorchServe started on ``store`` (loopback, free ports) and an uncached pipeline over it."""
    from avn.pipeline.backend import MODELS  # noqa: PLC0415
    from avn.serving.torchserve import LOOPBACK, TorchServe  # noqa: PLC0415
    from gateway.torchserve_backend import TorchServeBackend  # noqa: PLC0415

    with TorchServe(store, work_dir, disable_token_auth=True, system_metrics=False) as server:
        server.wait_until_ready(MODELS, timeout_s=ready_timeout_s)
        backend = TorchServeBackend(
            f"{LOOPBACK}:{server.ports.grpc_inference}", f"{LOOPBACK}:{server.ports.grpc_management}"
        )
        yield Pipeline(backend, cache=None)


def in_process_pipeline(store: Path, naive: bool = False, device: str = "cpu") -> Pipeline:
    from avn.serving.inprocess import InProcessBackend  # noqa: PLC0415

    backend = InProcessBackend.from_folder(store, device)
    return Pipeline(OneHeadAtATime(backend) if naive else backend, cache=None)


def ratios_to_baseline(figures: Sequence[BenchFigures], baseline: str = "naive") -> dict[str, dict[str, float]]:
    """Per configuration: throughput ÷ the baseline's, and the baseline's p50/p95 ÷ its own (× faster)."""
    base = next((f for f in figures if f.configuration == baseline), None)
    if base is None:
        return {}
    return {
        f.configuration: {
            "throughput": f.throughput / base.throughput if base.throughput else float("nan"),
            "p50_speedup": base.percentile_ms(50) / f.percentile_ms(50),
            "p95_speedup": base.percentile_ms(95) / f.percentile_ms(95),
        }
        for f in figures
    }


def write_json(path: Path, figures: Sequence[BenchFigures], context: dict) -> None:
    document = {**context, "results": [f.summary() for f in figures], "ratios_to_naive": ratios_to_baseline(figures)}
    path.write_text(json.dumps(document, indent=2))
