"""``avn bench``: the gateway's throughput and latency over gRPC, three ways in one run.

N radiographs of a data set are sent to a real gRPC server on loopback by C concurrent clients,
with the result cache off (every request computes), for each of three configurations:

* ``torchserve`` — the production path: gateway → TorchServe's gRPC inference API;
* ``in-process`` — the same gateway with the models in its own process (``avn serve --embedded``);
* ``naive`` — the baseline a first script would be: in-process, eager fp32, every model called
  for one femoral head at a time and one model call at a time in the process (no batching of
  the two heads, no concurrent classifiers).

The radiographs are full-size DICOMs in the transfer syntaxes hospitals send, round-robin
(:mod:`gateway.bench_payloads`). Each configuration gets a warm-up (one request per syntax, at
least two; not counted), then: the timed run (C clients); a single-client run (one client,
sequential requests: latency without queueing); a cache-hit run (the cache switched on, one
radiograph sent once to fill it, then again in every syntax: the pixels are the same, so every
answer is a hit). Peak resident memory of the gateway and of TorchServe's workers is sampled
throughout (:mod:`gateway.bench_memory`). The figures and what is derived from them (ratios to
naive, TorchServe's overhead over in-process, decode's share of the total) are in
:mod:`gateway.bench_figures`; ``--device cuda`` puts the models of every configuration on the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np

from avn.pipeline.backend import Classification, Detections, ModelBackend, ModelInfo
from avn.pipeline.pipeline import Pipeline
from gateway.admission import DEFAULT_MAX_IN_FLIGHT, Admission
from gateway.auth import OpenAuthenticator
from gateway.bench_figures import STEPS, BenchFigures, Sample, ratios_to_baseline, write_json
from gateway.bench_memory import RssSampler
from gateway.bench_payloads import AS_STORED, Payload, PayloadError, bench_payloads
from gateway.cache import LRUCache
from gateway.grpc_server import MAX_MESSAGE_BYTES, BackgroundGrpcServer, pb
from gateway.proto import load

__all__ = [
    "CONFIGURATIONS",
    "STEPS",
    "BenchError",
    "BenchFigures",
    "OneHeadAtATime",
    "in_process_pipeline",
    "measure",
    "radiograph_payloads",
    "ratios_to_baseline",
    "run_configuration",
    "torchserve_stack",
    "write_json",
]

CONFIGURATIONS = ("torchserve", "in-process", "naive")
WARMUP_REQUESTS = 2
RPC_TIMEOUT_S = 300.0


class BenchError(RuntimeError):
    """The benchmark cannot run (no radiographs, no store, no GPU, a server that would not start)."""


# ---------------------------------------------------------------- inputs


def radiograph_payloads(data: Path, count: int) -> list[bytes]:
    """The bytes of ``count`` radiographs of a data set folder as stored (repeated when it holds fewer)."""
    try:
        return [payload.data for payload in bench_payloads(data, count, [AS_STORED])]
    except PayloadError as error:
        raise BenchError(str(error)) from error


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


def measure(
    configuration: str,
    pipeline: Pipeline,
    payloads: Sequence[Payload | bytes],
    concurrency: int,
    *,
    single_client: int = 0,
    cache_hits: int = 0,
    model_server_pid: int | None = None,
) -> BenchFigures:
    """Serve ``pipeline`` over gRPC on loopback and time ``payloads`` sent by ``concurrency`` clients,
    then ``single_client`` of them by one client and ``cache_hits`` cache hits, sampling peak RSS.
    The server is this process's own, on loopback: no API key (authentication off, as AVN_AUTH=off
    allows on loopback only), and an in-flight limit above the clients, so that none is refused."""
    payloads = [p if isinstance(p, Payload) else Payload(AS_STORED, "", p) for p in payloads]
    warmup = max(WARMUP_REQUESTS, len({p.syntax for p in payloads}))
    admission = Admission(max_in_flight=max(DEFAULT_MAX_IN_FLIGHT, concurrency + warmup))
    with (
        RssSampler(model_server_pid) as memory,
        BackgroundGrpcServer(pipeline, authenticator=OpenAuthenticator(), admission=admission) as server,
        grpc.insecure_channel(server.target, options=_channel_options()) as channel,
    ):
        diagnose = _diagnose_call(load().services.DiagnosisStub(channel))
        for payload in payloads[:warmup]:
            diagnose(payload)
        figures = _timed_run(configuration, diagnose, payloads, concurrency)
        figures.syntaxes = list(dict.fromkeys(p.syntax for p in payloads))
        figures.single_client = [_sample(payload, diagnose) for payload in payloads[:single_client]]
        figures.cache_hits, figures.cache_misses_seen = _cache_hit_run(pipeline, diagnose, payloads, cache_hits)
    figures.memory_mb = memory.peaks_mb
    return figures


def _channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


def _diagnose_call(stub) -> Callable[[Payload], object]:
    def diagnose(payload: Payload):
        return stub.Diagnose(pb.DiagnoseRequest(image=payload.data), timeout=RPC_TIMEOUT_S)

    return diagnose


def _sample(payload: Payload, diagnose: Callable[[Payload], object]) -> Sample:
    """Send one payload; its latency as the client saw it and the server's step timings."""
    started = time.perf_counter()
    response = diagnose(payload)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    steps = {step: float(getattr(response.timings, f"{step}_ms")) for step in STEPS}
    return Sample(payload.syntax, elapsed_ms, steps)


def _cache_hit_run(
    pipeline: Pipeline, diagnose: Callable[[Payload], object], payloads: Sequence[Payload], hits: int
) -> tuple[list[Sample], int]:
    """The cache on (in-process LRU): the first radiograph once (a miss that fills the cache), then
    ``hits`` times in each syntax it was sent in. Returns the hits' samples and the misses seen."""
    if hits <= 0 or not payloads:
        return [], 0
    same = list({p.syntax: p for p in payloads if p.source == payloads[0].source}.values())
    pipeline.cache = LRUCache()
    try:
        diagnose(payloads[0])
        samples, misses = [], 0
        for index in range(hits):
            payload = same[index % len(same)]
            started = time.perf_counter()
            response = diagnose(payload)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            if not response.cache_hit:
                misses += 1
                continue
            steps = {step: float(getattr(response.timings, f"{step}_ms")) for step in STEPS}
            samples.append(Sample(payload.syntax, elapsed_ms, steps))
        return samples, misses
    finally:
        pipeline.cache = None


def _timed_run(
    configuration: str, diagnose: Callable[[Payload], object], payloads: Sequence[Payload], concurrency: int
) -> BenchFigures:
    next_index = iter(range(len(payloads)))
    take = threading.Lock()
    samples: list[Sample] = []
    failures: list[str] = []

    def client() -> None:
        while True:
            with take:
                index = next(next_index, None)
            if index is None:
                return
            try:
                sample = _sample(payloads[index], diagnose)
            except grpc.RpcError as error:
                with take:
                    failures.append(f"{error.code().name}: {error.details()}")
                continue
            with take:
                samples.append(sample)

    threads = [threading.Thread(target=client, name=f"bench-client-{i}") for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return BenchFigures(
        configuration=configuration,
        radiographs=len(payloads),
        concurrency=concurrency,
        seconds=time.perf_counter() - started,
        errors=len(failures),
        samples=samples,
        first_error=failures[0] if failures else "",
    )


# ---------------------------------------------------------------- the three configurations


def require_device(device: str) -> None:
    """Refuse a CUDA device that PyTorch cannot see, with the reason."""
    import torch  # noqa: PLC0415

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device}: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise BenchError(f"--device {device}: expected cpu or cuda[:N]")


@contextlib.contextmanager
def torchserve_stack(
    store: Path, work_dir: Path, device: str = "cpu", ready_timeout_s: float = 300.0
) -> Iterator[tuple[Pipeline, int]]:
    """A TorchServe started on ``store`` (loopback, free ports) and an uncached pipeline over it,
    with the pid of TorchServe's launcher (its workers are in its process tree). On ``cpu`` the
    server is pinned to no GPU; on ``cuda`` TorchServe gives each worker a GPU (its handlers then
    load the models there)."""
    from avn.pipeline.backend import MODELS  # noqa: PLC0415
    from avn.serving.torchserve import LOOPBACK, TorchServe  # noqa: PLC0415
    from gateway.torchserve_backend import TorchServeBackend  # noqa: PLC0415

    gpus = 0 if device == "cpu" else None
    with TorchServe(store, work_dir, disable_token_auth=True, system_metrics=False, gpus=gpus) as server:
        server.wait_until_ready(MODELS, timeout_s=ready_timeout_s)
        backend = TorchServeBackend(
            f"{LOOPBACK}:{server.ports.grpc_inference}", f"{LOOPBACK}:{server.ports.grpc_management}"
        )
        yield Pipeline(backend, cache=None), server.process.pid


def in_process_pipeline(store: Path, naive: bool = False, device: str = "cpu") -> Pipeline:
    from avn.serving.inprocess import InProcessBackend  # noqa: PLC0415

    # the naive baseline is also the trained fp32 models, whatever forms the store serves
    backend = InProcessBackend.from_folder(store, device, optimised=not naive)
    return Pipeline(OneHeadAtATime(backend) if naive else backend, cache=None)


def run_configuration(
    name: str,
    store: Path,
    payloads: Sequence[Payload],
    concurrency: int,
    device: str = "cpu",
    single_client: int = 0,
    cache_hits: int = 0,
) -> BenchFigures:
    """One configuration (``torchserve``, ``in-process`` or ``naive``) measured on ``payloads``."""
    options = {"single_client": single_client, "cache_hits": cache_hits}
    if name == "torchserve":
        with (
            tempfile.TemporaryDirectory(prefix="avn-bench-") as work_dir,
            torchserve_stack(store, Path(work_dir), device) as (pipeline, pid),
        ):
            return measure(name, pipeline, payloads, concurrency, model_server_pid=pid, **options)
    if name not in CONFIGURATIONS:
        raise BenchError(f"unknown configuration {name!r}; expected one of {CONFIGURATIONS}")
    pipeline = in_process_pipeline(store, naive=name == "naive", device=device)
    return measure(name, pipeline, payloads, concurrency, **options)
