"""Measure TorchServe's batching and worker threads on this machine, one setting at a time.

Each setting is a copy of the store with other TorchServe settings in its archives
(:func:`avn.store.retune_store`: batch size, batch delay, workers; weights untouched) and a number
of intra-op threads per model worker (``OMP_NUM_THREADS``); `avn bench`'s torchserve
configuration then measures it over gRPC on the same full-size DICOMs. The figures printed (and
written with ``--json``) are what the defaults in ``avn/store.py`` (``DEFAULT_SERVING``) and
``avn/serving/torchserve.py`` (``WORKERS_SHARING_CORES``) were chosen from.

    python scripts/tune_serving.py --store model_store_timing --data data/demo            # 2-core CPU grid
    python scripts/tune_serving.py --store model_store_timing --grid gpu --device cuda    # a GPU node

Benchmarks, not tests: run on an otherwise idle machine, and compare settings within one run.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from avn.store import DEFAULT_SERVING, ServingConfig, retune_store
from gateway.bench import run_configuration
from gateway.bench_figures import percentile
from gateway.bench_payloads import bench_payloads

CLASSIFIERS = ("view", "side", "staging", "notes")
console = Console(width=140)


@dataclass(frozen=True)
class Setting:
    name: str
    threads: int  # intra-op threads per TorchServe model worker
    classifier: ServingConfig
    detection: ServingConfig

    def serving(self) -> dict[str, ServingConfig]:
        return {"detection": self.detection, **{task: self.classifier for task in CLASSIFIERS}}


def cpu_grid() -> list[Setting]:
    """Around the defaults: no batching, shorter and longer batch windows, more threads, more workers."""
    classifier, detection = DEFAULT_SERVING["view"], DEFAULT_SERVING["detection"]
    return [
        Setting("defaults", 1, classifier, detection),
        Setting("no batching", 1, replace(classifier, batch_size=1), replace(detection, batch_size=1)),
        Setting(
            "short window",
            1,
            replace(classifier, max_batch_delay_ms=5),
            replace(detection, max_batch_delay_ms=10),
        ),
        Setting(
            "long window",
            1,
            replace(classifier, max_batch_delay_ms=60),
            replace(detection, max_batch_delay_ms=120),
        ),
        Setting("2 threads a worker", 2, classifier, detection),
        Setting("2 detector workers", 1, classifier, replace(detection, min_workers=2, max_workers=2)),
    ]


def gpu_grid() -> list[Setting]:
    """Larger batches and a second worker per model: a GPU gains from both, a CPU from neither."""
    classifier, detection = DEFAULT_SERVING["view"], DEFAULT_SERVING["detection"]
    return [
        Setting("defaults", 1, classifier, detection),
        Setting("batch 32/16", 1, replace(classifier, batch_size=32), replace(detection, batch_size=16)),
        Setting(
            "batch 32/16, 2 workers",
            1,
            replace(classifier, batch_size=32, min_workers=2, max_workers=2),
            replace(detection, batch_size=16, min_workers=2, max_workers=2),
        ),
        Setting(
            "batch 32/16, short window",
            1,
            replace(classifier, batch_size=32, max_batch_delay_ms=5),
            replace(detection, batch_size=16, max_batch_delay_ms=10),
        ),
    ]


def main(
    store: Path = typer.Option(..., "--store", help="A model store (a timing store for the paper's shapes)."),
    data: Path = typer.Option(Path("data/demo"), "--data", help="Data set whose radiographs are sent."),
    count: int = typer.Option(40, "-n", min=1, help="Radiographs per setting."),
    concurrency: int = typer.Option(4, "-c", min=1, help="Concurrent gRPC clients."),
    single_client: int = typer.Option(8, "--single-client", min=0, help="Sequential requests of one client."),
    grid: str = typer.Option("cpu", "--grid", help="cpu (around the defaults) or gpu (larger batches, 2 workers)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    syntaxes: str = typer.Option("explicit-le,jpeg2000-lossless,jpeg-ls-lossless,rle-lossless", "--syntaxes"),
    only: str = typer.Option("", "--only", help="Comma-separated setting names to run (default: the whole grid)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    settings = {"cpu": cpu_grid, "gpu": gpu_grid}[grid]()
    if only:
        wanted = {name.strip() for name in only.split(",")}
        settings = [setting for setting in settings if setting.name in wanted]
    payloads = bench_payloads(data, count, [name.strip() for name in syntaxes.split(",")], 4)
    rows = []
    for setting in settings:
        console.print(f"[bold]{setting.name}[/]: {setting.threads} thread(s) a worker, {setting.serving()['view']}")
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(setting.threads)
        with tempfile.TemporaryDirectory(prefix="avn-tune-") as scratch:
            tuned = Path(scratch) / "store"
            retune_store(store, tuned, setting.serving())
            figures = run_configuration("torchserve", tuned, payloads, concurrency, device, single_client)
        rows.append((setting, figures))
    print_rows(rows)
    if json_out:
        document = [{"setting": asdict(setting), "figures": figures.summary()} for setting, figures in rows]
        json_out.write_text(json.dumps(document, indent=1, default=str))
        console.print(f"figures in {json_out}")


def print_rows(rows) -> None:
    table = Table(title="TorchServe settings (torchserve configuration of avn bench)")
    columns = (
        "setting",
        "threads",
        "batch/delay ms: cls; det",
        "img/s",
        "p50",
        "p95",
        "1-client p50",
        "detect/classify",
    )
    for column in columns:
        table.add_column(column)
    for setting, figures in rows:
        steps = figures.step_means_ms
        single = percentile([sample.latency_ms for sample in figures.single_client], 50)
        table.add_row(
            setting.name,
            str(setting.threads),
            f"{setting.classifier.batch_size}/{setting.classifier.max_batch_delay_ms}; "
            f"{setting.detection.batch_size}/{setting.detection.max_batch_delay_ms}"
            f"{' ×' + str(setting.detection.max_workers) if setting.detection.max_workers > 1 else ''}",
            f"{figures.throughput:.2f}",
            f"{figures.percentile_ms(50):.0f}",
            f"{figures.percentile_ms(95):.0f}",
            f"{single:.0f}" if figures.single_client else "—",
            f"{steps.get('detect', 0):.0f} / {steps.get('classify', 0):.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    typer.run(main)
