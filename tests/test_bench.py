"""`avn bench`: the naive baseline answers what the batched backend answers, and each
configuration (TorchServe, in-process, naive) is measured over real gRPC on loopback. Timings are
printed, never asserted (noisy machines): the checks are on counts, structure and errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MODEL_VERSION
from gateway_support import write_tiny_store
from typer.testing import CliRunner

from avn.cli import app
from avn.phantom.build import PhantomOptions, build_phantom
from avn.pipeline.pipeline import Pipeline
from avn.serving.inprocess import InProcessBackend
from avn.serving.torchserve import LOOPBACK, TorchServe
from gateway.bench import STEPS, OneHeadAtATime, in_process_pipeline, measure, radiograph_payloads, ratios_to_baseline
from gateway.torchserve_backend import TorchServeBackend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_tiny_store(root)
    build_phantom(PhantomOptions(subjects=1, seed=3, image_format="dicom", scale=0.2), root / "data", workers=1)
    return root


def test_one_head_at_a_time_gives_the_batched_answers(bench_root: Path) -> None:
    backend = InProcessBackend.from_store(bench_root / "model_store")
    crops = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)

    async def both(model: str, cam_stage: str | None):
        batched = await backend.classify(model, crops, cam_stage)
        single = await OneHeadAtATime(backend).classify(model, crops, cam_stage)
        return batched, single

    for model, cam_stage in (("view", None), ("notes", None), ("staging", "III")):
        batched, single = asyncio.run(both(model, cam_stage))
        assert single.labels == batched.labels
        np.testing.assert_allclose(single.probabilities, batched.probabilities, atol=1e-5)
        if model == "staging":
            assert single.cam_labels == batched.cam_labels == ("III", "III")
            np.testing.assert_allclose(single.cams, batched.cams, atol=1e-4)


@pytest.mark.parametrize("naive", [False, True], ids=["in-process", "naive"])
def test_measure_in_process_counts_every_radiograph_and_its_steps(bench_root: Path, naive: bool) -> None:
    payloads = radiograph_payloads(bench_root / "data", 3)
    figures = measure(
        "naive" if naive else "in-process", in_process_pipeline(bench_root / "model_store", naive), payloads, 2
    )
    assert (figures.radiographs, figures.errors, len(figures.latencies_ms)) == (3, 0, 3)
    assert figures.throughput > 0 and figures.percentile_ms(50) <= figures.percentile_ms(99)
    assert set(figures.step_means_ms) == set(STEPS)
    assert figures.step_means_ms["detect"] > 0 and figures.step_means_ms["classify"] > 0
    assert figures.step_means_ms["total"] >= figures.step_means_ms["detect"]


def test_measure_through_torchserve(torchserve_server: TorchServe, bench_root: Path) -> None:
    backend = TorchServeBackend(
        f"{LOOPBACK}:{torchserve_server.ports.grpc_inference}", f"{LOOPBACK}:{torchserve_server.ports.grpc_management}"
    )
    figures = measure("torchserve", Pipeline(backend, cache=None), radiograph_payloads(bench_root / "data", 3), 2)
    assert (figures.errors, len(figures.latencies_ms)) == (0, 3)
    print(f"torchserve (test store, version {MODEL_VERSION}): {figures.summary()}")


def test_cli_prints_and_writes_the_figures_with_ratios_to_naive(bench_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--store",
            str(bench_root / "model_store"),
            "--data",
            str(bench_root / "data"),
            "-n",
            "3",
            "-c",
            "2",
            "--configurations",
            "in-process,naive",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "in-process" in result.output and "naive" in result.output and "p95" in result.output
    document = json.loads(out.read_text())
    assert [r["configuration"] for r in document["results"]] == ["in-process", "naive"]
    assert all(r["errors"] == 0 and r["radiographs"] == 3 for r in document["results"])
    assert document["ratios_to_naive"]["naive"] == {"throughput": 1.0, "p50_speedup": 1.0, "p95_speedup": 1.0}


def test_ratios_need_the_baseline() -> None:
    assert ratios_to_baseline([]) == {}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (("--configurations", "fast"), "unknown ['fast']"),
        (("--data", "."), "no annotations.json"),
        (("--store", "."), "no .mar archives"),
    ],
)
def test_cli_refuses_bad_options_with_a_message(bench_root: Path, override: tuple[str, str], message: str) -> None:
    options = {"--store": str(bench_root / "model_store"), "--data": str(bench_root / "data"), "-n": "1"}
    options[override[0]] = override[1]
    result = CliRunner().invoke(app, ["bench", *(item for pair in options.items() for item in pair)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
