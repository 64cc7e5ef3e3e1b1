"""`avn bench`: the naive baseline answers what the batched backend answers, and each
configuration (TorchServe, in-process, naive) is measured over real gRPC on loopback; the timing
store's cards say "untrained weights: timing only" and its classifiers take 224-px crops; every
transfer syntax sent carries the same pixels; the percentiles, ratios and goal figures are computed
right on made-up samples; the JSON holds every figure. Timings are printed, never asserted (noisy
machines): the checks are on counts, structure, arithmetic and errors."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
import pytest
import torch
from conftest import MODEL_VERSION
from gateway_support import write_tiny_store
from typer.testing import CliRunner

from avn.cli import app
from avn.dataset.images import read_radiograph
from avn.phantom.build import PhantomOptions, build_phantom
from avn.pipeline.pipeline import Pipeline
from avn.serving.inprocess import InProcessBackend
from avn.serving.torchserve import LOOPBACK, TorchServe
from avn.timing_store import TIMING_ONLY, is_complete_timing_store, is_timing_only, store_cards
from gateway.bench import (
    STEPS,
    BenchError,
    OneHeadAtATime,
    in_process_pipeline,
    measure,
    radiograph_payloads,
    ratios_to_baseline,
    require_device,
)
from gateway.bench_figures import BenchFigures, Sample, bench_document, goal_figures, write_json
from gateway.bench_payloads import (
    SYNTAXES,
    PayloadError,
    bench_payloads,
    missing_encoders,
    transcode,
)
from gateway.torchserve_backend import TorchServeBackend

pytestmark = pytest.mark.slow
DICOM_SYNTAXES = list(SYNTAXES)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_tiny_store(root)
    build_phantom(PhantomOptions(subjects=1, seed=3, image_format="dicom", scale=0.2), root / "data", workers=1)
    return root


@pytest.fixture(scope="module")
def timing_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timing store built by the command line (`avn build-store --timing-only`)."""
    out = tmp_path_factory.mktemp("timing") / "store"
    result = CliRunner().invoke(app, ["build-store", "--timing-only", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert TIMING_ONLY in " ".join(result.output.split())
    return out


# ---------------------------------------------------------------- the timing store


def test_timing_store_cards_say_untrained_and_classifiers_take_224_px(timing_store: Path) -> None:
    cards = store_cards(timing_store)
    assert sorted(cards) == sorted(["detection", "view", "side", "staging", "notes"])
    for task, card in cards.items():
        assert card.extra == {"timing_only": True, "note": TIMING_ONLY, "profile": "paper"}
        assert "untrained" in card.version and TIMING_ONLY in card.training_data_hash
        if task != "detection":
            assert card.input_size == 224
        # served in this CPU's fastest form, and labelled as not checked (untrained weights)
        assert card.optimisation["checked"] is False and "not checked" in card.optimisation["note"]
        assert card.optimisation["forms"][card.optimisation["form"]]["ms_per_batch"] > 0
    assert is_timing_only(cards) and is_complete_timing_store(timing_store)
    assert not is_complete_timing_store(timing_store, profile="quick")  # 96-px crops expected there


def test_a_trained_store_is_not_a_timing_store(bench_root: Path) -> None:
    assert not is_timing_only(store_cards(bench_root / "model_store"))
    assert not is_complete_timing_store(bench_root / "model_store")


def test_build_store_needs_run_or_timing_only(tmp_path: Path) -> None:
    neither = CliRunner().invoke(app, ["build-store", "--out", str(tmp_path)])
    both = CliRunner().invoke(app, ["build-store", "--run", str(tmp_path), "--timing-only", "--out", str(tmp_path)])
    assert neither.exit_code == both.exit_code == 2
    assert "--timing-only" in neither.output


def test_timing_store_serves_224_px_crops_in_process(timing_store: Path, bench_root: Path) -> None:
    payloads = bench_payloads(bench_root / "data", 2, ["explicit-le"], sources=1)
    figures = measure("in-process", in_process_pipeline(timing_store), payloads, 1)
    assert (figures.errors, len(figures.samples)) == (0, 2), figures.first_error
    assert figures.step_means_ms["classify"] > 0  # the untrained detector still gives heads to classify
    backend = InProcessBackend.from_store(timing_store)
    sizes = {info.name: info.input_size for info in asyncio.run(backend.models())}
    assert all(size == 224 for name, size in sizes.items() if name != "detection")


# ---------------------------------------------------------------- transfer syntaxes


@pytest.mark.parametrize("syntax", DICOM_SYNTAXES)
def test_every_transfer_syntax_carries_the_same_pixels(bench_root: Path, syntax: str) -> None:
    source = next((bench_root / "data").rglob("*.dcm")).read_bytes()
    encoded = transcode(source, syntax)
    dataset = pydicom.dcmread(io.BytesIO(encoded))
    expected_uid = SYNTAXES[syntax] or pydicom.uid.ExplicitVRLittleEndian
    assert dataset.file_meta.TransferSyntaxUID == expected_uid
    assert dataset.file_meta.TransferSyntaxUID.is_compressed == (SYNTAXES[syntax] is not None)
    np.testing.assert_array_equal(dataset.pixel_array, pydicom.dcmread(io.BytesIO(source)).pixel_array)
    np.testing.assert_array_equal(read_radiograph(encoded).pixels, read_radiograph(source).pixels)


def test_payloads_go_round_robin_over_syntaxes_and_sources(bench_root: Path) -> None:
    payloads = bench_payloads(bench_root / "data", 7, ["explicit-le", "rle-lossless", "jpeg-ls-lossless"], sources=2)
    assert [p.syntax for p in payloads] == ["explicit-le", "rle-lossless", "jpeg-ls-lossless"] * 2 + ["explicit-le"]
    sources = [p.source for p in payloads]
    assert sources[:3] == [sources[0]] * 3 and sources[3:6] == [sources[3]] * 3 and sources[0] != sources[3]
    assert sources[6] == sources[0]
    assert payloads[0].data is payloads[6].data  # encoded once, shared


def test_payload_options_refused_with_the_reason(bench_root: Path) -> None:
    with pytest.raises(PayloadError, match="unknown transfer syntaxes"):
        missing_encoders(["jpeg-xl"])
    with pytest.raises(PayloadError, match="cannot be mixed"):
        bench_payloads(bench_root / "data", 2, ["as-stored", "rle-lossless"])
    stored = bench_payloads(bench_root / "data", 2, ["as-stored"])
    assert stored[0].data == next((bench_root / "data").rglob(stored[0].source)).read_bytes()


def test_a_missing_encoder_is_named_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unavailable:
        is_available = False
        missing_dependencies = ["pyjpegls - requires pyjpegls"]

    real = pydicom.pixels.get_encoder
    monkeypatch.setattr(
        pydicom.pixels, "get_encoder", lambda uid: Unavailable() if uid == SYNTAXES["jpeg-ls-lossless"] else real(uid)
    )
    assert missing_encoders(DICOM_SYNTAXES) == {"jpeg-ls-lossless": "no encoder: pyjpegls - requires pyjpegls"}


# ---------------------------------------------------------------- figures (made-up samples)


def _samples(latencies, syntax: str = "explicit-le", decode: float = 30.0, total: float = 120.0) -> list[Sample]:
    steps = dict.fromkeys(STEPS, 1.0) | {"decode": decode, "total": total}
    return [Sample(syntax, float(latency), steps) for latency in latencies]


def _figures(name: str, seconds: float, single, decode: float = 30.0, total: float = 120.0) -> BenchFigures:
    return BenchFigures(
        configuration=name,
        radiographs=100,
        concurrency=4,
        seconds=seconds,
        errors=0,
        samples=_samples(range(1, 101), decode=decode, total=total),
        single_client=_samples(single),
        cache_hits=_samples([5.0] * 9 + [15.0]),
        memory_mb={"gateway": 512.0},
    )


def test_percentiles_interpolate_between_order_statistics() -> None:
    figures = _figures("in-process", 10.0, [100.0])
    assert figures.percentile_ms(50) == pytest.approx(50.5)
    assert figures.percentile_ms(95) == pytest.approx(95.05)
    assert figures.percentile_ms(99) == pytest.approx(99.01)
    assert figures.throughput == pytest.approx(10.0)
    summary = figures.summary()
    assert summary["cache_hit"]["p99_ms"] == pytest.approx(14.1)  # 5 ×9, 15: 0.91 of the way from 5 to 15
    assert summary["cache_hit"]["p50_ms"] == 5.0 and summary["decode_share_pct"] == pytest.approx(25.0)
    assert math.isnan(BenchFigures("x", 0, 1, 0.0, 0).percentile_ms(50))


def test_ratios_and_goal_figures() -> None:
    figures = [
        _figures("torchserve", 25.0, [110.0, 110.0], decode=40.0, total=160.0),
        _figures("in-process", 20.0, [100.0, 100.0]),
        _figures("naive", 50.0, [300.0]),
    ]
    ratios = ratios_to_baseline(figures)
    assert ratios["in-process"]["throughput"] == pytest.approx(2.5)  # 5 img/s against 2
    assert ratios["torchserve"]["single_client_p50_speedup"] == pytest.approx(300 / 110)
    assert ratios["naive"] == dict.fromkeys(ratios["naive"], 1.0)
    goals = goal_figures(figures)
    assert goals["torchserve_overhead_pct"]["single_client_p50"] == pytest.approx(10.0)
    assert goals["torchserve_overhead_pct"]["p50"] == pytest.approx(0.0)
    assert goals["torchserve_overhead_pct"]["throughput"] == pytest.approx(25.0)  # 0.25 s against 0.2 s
    assert goals["decode_share_pct"] == {"torchserve": 25.0, "in-process": 25.0, "naive": 25.0}
    assert "torchserve_overhead_pct" not in goal_figures(figures[1:])


def test_figures_per_syntax() -> None:
    figures = _figures("in-process", 10.0, [1.0])
    figures.samples = _samples([10, 20], "rle-lossless", decode=60.0, total=120.0) + _samples([30], "explicit-le")
    per_syntax = figures.per_syntax()
    assert list(per_syntax) == ["rle-lossless", "explicit-le"]
    assert per_syntax["rle-lossless"]["requests"] == 2 and per_syntax["rle-lossless"]["p50_ms"] == 15.0
    assert per_syntax["rle-lossless"]["decode_share_pct"] == pytest.approx(50.0)
    assert per_syntax["explicit-le"]["decode_mean_ms"] == 30.0
    assert math.isnan(per_syntax["rle-lossless"]["cache_hit_p99_ms"])  # no hit sent in that syntax


def test_json_has_every_figure_and_is_strict(tmp_path: Path) -> None:
    figures = [_figures("in-process", 20.0, [100.0]), _figures("naive", 50.0, [])]
    out = tmp_path / "bench.json"
    write_json(out, figures, {"store_label": TIMING_ONLY, "timing_only": True})
    document = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert set(document) >= {"results", "ratios_to_naive", "goals", "timing_only", "store_label"}
    result = document["results"][0]
    assert set(result) >= {
        "configuration", "radiographs_per_s", "p50_ms", "p95_ms", "p99_ms", "step_means_ms", "decode_share_pct",
        "single_client", "cache_hit", "per_syntax", "peak_rss_mb", "errors",
    }  # fmt: skip
    assert set(result["step_means_ms"]) == set(STEPS) and result["peak_rss_mb"] == {"gateway": 512.0}
    assert document["results"][1]["single_client"]["p50_ms"] is None  # NaN written as null
    assert document["goals"]["decode_share_pct"] == {"in-process": 25.0, "naive": 25.0}
    assert document["ratios_to_naive"]["in-process"]["throughput"] == pytest.approx(2.5)
    assert math.isnan(bench_document(figures, {})["results"][1]["single_client"]["p50_ms"])


# ---------------------------------------------------------------- measured over gRPC


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
    payloads = bench_payloads(bench_root / "data", 4, DICOM_SYNTAXES, sources=2)
    figures = measure(
        "naive" if naive else "in-process",
        in_process_pipeline(bench_root / "model_store", naive),
        payloads,
        2,
        single_client=2,
        cache_hits=5,
    )
    assert (figures.radiographs, figures.errors, len(figures.latencies_ms)) == (4, 0, 4), figures.first_error
    assert figures.throughput > 0 and figures.percentile_ms(50) <= figures.percentile_ms(99)
    assert set(figures.step_means_ms) == set(STEPS)
    assert figures.step_means_ms["detect"] > 0 and figures.step_means_ms["classify"] > 0
    assert figures.step_means_ms["total"] >= figures.step_means_ms["detect"]
    assert list(figures.per_syntax()) == DICOM_SYNTAXES  # in the order sent
    assert len(figures.single_client) == 2
    # The same radiograph in every syntax has the same pixels: all hits, none skipping decode.
    assert (len(figures.cache_hits), figures.cache_misses_seen) == (5, 0)
    assert {s.syntax for s in figures.cache_hits} == set(DICOM_SYNTAXES)
    assert all(s.steps_ms["decode"] > 0 and s.steps_ms["detect"] == 0 for s in figures.cache_hits)
    assert figures.memory_mb["gateway"] >= figures.memory_mb["gateway_before"] > 0
    assert "torchserve_workers" not in figures.memory_mb


def test_measure_through_torchserve(torchserve_server: TorchServe, bench_root: Path) -> None:
    backend = TorchServeBackend(
        f"{LOOPBACK}:{torchserve_server.ports.grpc_inference}", f"{LOOPBACK}:{torchserve_server.ports.grpc_management}"
    )
    figures = measure(
        "torchserve",
        Pipeline(backend, cache=None),
        radiograph_payloads(bench_root / "data", 3),
        2,
        model_server_pid=torchserve_server.process.pid,
    )
    assert (figures.errors, len(figures.latencies_ms)) == (0, 3), figures.first_error
    # Five model workers, each a Python process with torch loaded; a Java frontend.
    assert figures.memory_mb["torchserve_workers"] > 5 * 50 and figures.memory_mb["torchserve_frontend"] > 0
    assert figures.memory_mb["torchserve_worker_max"] <= figures.memory_mb["torchserve_workers"]
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
            "4",
            "-c",
            "2",
            "--sources",
            "1",
            "--single-client",
            "2",
            "--cache-hits",
            "4",
            "--configurations",
            "in-process,naive",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    for text in ("in-process", "naive", "p95", "1-client", "hit p99", "rle-lossless", "decode as % of"):
        assert text in output
    assert TIMING_ONLY not in output
    document = json.loads(out.read_text())
    assert [r["configuration"] for r in document["results"]] == ["in-process", "naive"]
    assert all(r["errors"] == 0 and r["radiographs"] == 4 for r in document["results"])
    assert all(r["cache_hit"]["requests"] == 4 and r["single_client"]["requests"] == 2 for r in document["results"])
    assert all(sorted(r["per_syntax"]) == sorted(DICOM_SYNTAXES) for r in document["results"])
    assert document["ratios_to_naive"]["naive"] == dict.fromkeys(document["ratios_to_naive"]["naive"], 1.0)
    assert (document["timing_only"], document["device"], document["syntaxes_left_out"]) == (False, "cpu", {})


def test_cli_benches_a_timing_store_labelled_untrained(timing_store: Path, bench_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    arguments = ["bench", "--timing-store", str(timing_store), "--data", str(bench_root / "data"), "-n", "2"]
    options = ["-c", "1", "--syntaxes", "jpeg2000-lossless", "--single-client", "1", "--cache-hits", "1"]
    result = CliRunner().invoke(app, [*arguments, *options, "--configurations", "in-process", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert TIMING_ONLY in " ".join(result.output.split())
    assert "building a timing store" not in result.output  # complete already: reused
    document = json.loads(out.read_text())
    assert document["timing_only"] is True and document["store_label"] == TIMING_ONLY
    assert set(document["model_versions"].values()) == {"0.0.0+untrained-timing-only"}


def test_ratios_need_the_baseline() -> None:
    assert ratios_to_baseline([]) == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_refused_without_a_gpu() -> None:
    with pytest.raises(BenchError, match="no CUDA GPU"):
        require_device("cuda")
    with pytest.raises(BenchError, match="expected cpu or cuda"):
        require_device("tpu")
    require_device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_script_stops_with_a_reason_without_a_gpu() -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_bench.sh"
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": "python3"}
    )
    assert result.returncode == 2
    assert result.stderr.startswith("gpu_bench.sh: no GPU:") and "avn bench" in result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (("--configurations", "fast"), "unknown ['fast']"),
        (("--data", "."), "no annotations.json"),
        (("--store", "."), "no .mar archives"),
        (("--syntaxes", "jpeg-xl"), "unknown transfer syntaxes"),
        (("--device", "tpu"), "expected cpu or cuda"),
    ],
)
def test_cli_refuses_bad_options_with_a_message(bench_root: Path, override: tuple[str, str], message: str) -> None:
    options = {"--store": str(bench_root / "model_store"), "--data": str(bench_root / "data"), "-n": "1"}
    options[override[0]] = override[1]
    result = CliRunner().invoke(app, ["bench", *(item for pair in options.items() for item in pair)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
