"""``avn evaluate``, ``avn calibrate`` and ``avn operating-points`` (registered on the main ``avn`` app
in :mod:`avn.cli`)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import typer

from avn.evaluation.bootstrap import DEFAULT_RESAMPLES
from avn.progress import StageBars, console, progress_bar

HEADLINE_FILE = "headline.md"  # the README's table, ready to paste


def evaluate(
    data: Path = typer.Option(..., "--data", help="Data-set folder (annotations.json + images)."),
    store: Path = typer.Option(None, "--store", help="Model store of .mar archives to evaluate."),
    run: Path = typer.Option(
        None,
        "--run",
        help="Training run folder: the models (without --store), its validation "
        "fold for temperature scaling and, with ≥ 2 CV repeats, CIs over repeats.",
    ),
    split: str = typer.Option("test", "--split", help="Split to evaluate: test (the T-set), E1, E2, E3 or train."),
    out: Path = typer.Option(..., "--out", help="Report folder: report.html, report.json, PNG figures."),
    resamples: int = typer.Option(DEFAULT_RESAMPLES, min=100, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed (recorded in the report)."),
    train_data: Path = typer.Option(None, "--train-data", help="Data set the run was trained on, if not --data."),
    store_temperature: bool = typer.Option(
        False,
        "--store-temperature",
        help="Write temperatures fitted here into the run's checkpoints (as `avn calibrate`).",
    ),
) -> None:
    """Run the serving pipeline over a split and write the paper's tables, figures and calibration."""
    from avn.evaluation.evaluate import EvaluationRequest
    from avn.evaluation.evaluate import evaluate as run_evaluation
    from avn.evaluation.report import REPORT_HTML, write_report

    if store is None and run is None:
        raise typer.BadParameter("give --store DIR or --run DIR (or both: models from the store, folds from the run)")
    started = time.perf_counter()
    with progress_bar() as progress:
        request = EvaluationRequest(
            data_dir=data,
            split=split,
            store=store,
            run=run,
            train_data=train_data,
            resamples=resamples,
            seed=seed,
            store_temperature=store_temperature,
            command=shlex.join(["avn", *sys.argv[1:]]),
            progress=StageBars(progress),
        )
        try:
            document, figures = run_evaluation(request)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error
    paths = write_report(document, figures, out)
    table = headline(document)
    (Path(out) / HEADLINE_FILE).write_text(table + "\n")
    typer.echo(table)
    console.print(
        f"wrote {paths[REPORT_HTML]} and {len(paths) - 1} more files in {time.perf_counter() - started:.1f} s"
    )


HEADLINE_KEYS = (
    "detection.detector.f1@0.5",
    "detection.detector.f1@0.6",
    "detection.detector.f1@0.7",
    "view.auc",
    "side.auc",
    "notes.fused.auc",
    "presence.auc",
    "presence.sensitivity",
    "presence.specificity",
    "subject.AP+FL.sensitivity",
    "subject.AP.sensitivity",
    "subject.FL.sensitivity",
    "staging.absence.auc",
    "staging.II.auc",
    "staging.III.auc",
    "staging.IV.auc",
    "staging.macro_f1",
)


def headline(document: dict) -> str:
    """The README's headline table (Markdown): our figures with CIs beside the paper's, then ECE."""
    rows = {row["key"]: row for table in document["tables"].values() for row in table["rows"]}
    lines = ["| figure | ours (phantom) | 95% CI | paper (real radiographs) | paper 95% CI |", "|---|---|---|---|---|"]
    for key in HEADLINE_KEYS:
        row = rows[key]
        paper = row["paper"] or {}
        lines.append(
            f"| {row['label']} | {_fmt(row['estimate'])} | {_fmt_ci(row['low'], row['high'])} | "
            f"{_fmt(paper.get('value'))} | {_fmt_ci(paper.get('low'), paper.get('high'))} |"
        )
    for row in document["calibration"]["rows"]:
        after = "" if row["ece_after"] is None else f" → {_fmt(row['ece_after'])} at T = {row['temperature']:.3g}"
        lines.append(
            f"| {row['task']} ECE (T = 1{' → fitted' if after else ''}) | {_fmt(row['ece_before'])}{after} |"
            " | not reported | |"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _fmt_ci(low: float | None, high: float | None) -> str:
    return "—" if low is None or high is None else f"{low:.4f}–{high:.4f}"


def calibrate(
    run: Path = typer.Option(..., "--run", help="Run folder written by `avn train`."),
    data: Path = typer.Option(..., "--data", help="The data set the run was trained on."),
    store: Path = typer.Option(None, "--store", help="Also rebuild these classifier archives with the new cards."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Fit and print, write nothing."),
) -> None:
    """Fit each classifier's temperature on its validation fold and store it in the model card."""
    from avn.evaluation.run_info import RunInfoError
    from avn.evaluation.temperature import calibrate_run
    from avn.models.classifier import CLASSIFIER_TASKS

    with progress_bar() as progress:
        on_image = _cropping_counter(StageBars(progress))
        try:
            results = calibrate_run(run, data, write=not dry_run, on_image=on_image)
        except (RunInfoError, FileNotFoundError) as error:
            raise typer.BadParameter(str(error)) from error
    typer.echo("| model | T | NLL before → after | ECE before → after | validation heads | version |")
    typer.echo("|---|---|---|---|---|---|")
    for task, r in results.items():
        typer.echo(
            f"| {task} | {r['temperature']:.4f} | {r['nll_before']:.4f} → {r['nll_after']:.4f} | "
            f"{r['ece_before']:.4f} → {r['ece_after']:.4f} | {r['samples']} | {r.get('version', '(not written)')} |"
        )
    for r in results.values():
        if "warning" in r:
            console.print(f"[yellow]warning:[/] {r['warning']}")
    if store is not None and not dry_run:
        from avn.store import build_store

        build_store(run, store, tasks=tuple(CLASSIFIER_TASKS))
        console.print(f"rebuilt {', '.join(CLASSIFIER_TASKS)} archives in {store}")


def operating_points(
    run: Path = typer.Option(..., "--run", help="Run folder written by `avn train`."),
    data: Path = typer.Option(..., "--data", help="The data set the run was trained on."),
    store: Path = typer.Option(None, "--store", help="Also rebuild the staging archive with the new card."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Choose and print, write nothing."),
) -> None:
    """Choose the staging model's operating points (sensitive, specific, default) on its validation
    fold and store them in its model card (after `avn calibrate`, if you calibrate)."""
    from avn.evaluation.operating_point_store import TASK, run_operating_points
    from avn.evaluation.run_info import RunInfoError
    from avn.operating_points import OperatingPointError

    with progress_bar() as progress:
        on_image = _cropping_counter(StageBars(progress))
        try:
            result = run_operating_points(run, data, write=not dry_run, on_image=on_image)
        except (RunInfoError, OperatingPointError, FileNotFoundError) as error:
            raise typer.BadParameter(str(error)) from error
    typer.echo(f"validation fold {result['fold']}, {result['heads']} heads")
    typer.echo("| operating point | threshold | sensitivity | specificity | chosen as |")
    typer.echo("|---|---|---|---|---|")
    for name, point in result["points"].items():
        typer.echo(
            f"| {name} | {point['threshold']:.4f} | {point['sensitivity']:.3f} | {point['specificity']:.3f} | "
            f"{point['target']} |"
        )
    typer.echo(f"staging version: {result.get('version', '(not written)')}")
    if store is not None and not dry_run:
        from avn.store import build_store

        build_store(run, store, tasks=(TASK,))
        console.print(f"rebuilt the {TASK} archive in {store}")


def _cropping_counter(bars: StageBars):
    """A callback that counts validation radiographs as they are cropped, on the progress bars."""
    count = {"done": 0}

    def on_image() -> None:
        count["done"] += 1
        bars("validation radiographs cropped", count["done"], 0)

    return on_image
