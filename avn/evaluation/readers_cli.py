"""The ``avn readers`` command: analyse a reader study, or simulate one and analyse it.

The CSV formats are ``avn.readers_format`` (docs/readers.md); the analysis is
``avn.evaluation.readers``, its report ``avn.evaluation.readers_report``; ``--simulate`` is
``avn.evaluation.simulate_readers``.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from avn.evaluation.bootstrap import DEFAULT_RESAMPLES

console = Console(stderr=True)


def readers(
    extra_readers: list[Path] = typer.Argument(
        None, metavar="[READER_CSV]...", help="More reader CSV files (after --readers)."
    ),
    truth: Path = typer.Option(None, "--truth", help="Ground truth CSV: case_id,side,stage."),
    reader_files: list[Path] = typer.Option(
        None, "--readers", help="Reader CSV: reader,case_id,side,stage,seconds,assisted (repeatable)."
    ),
    model: Path = typer.Option(None, "--model", help="Model CSV: case_id,side,stage,p_absence,p_II,p_III,p_IV."),
    out: Path = typer.Option(..., "--out", help="Output folder: report.html, report.json, PNG figures."),
    simulate: bool = typer.Option(
        False, "--simulate", help="Write a simulated study (E1 unassisted, E2 assisted) into OUT and analyse it."
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help="--simulate: data set whose E1/E2 splits give the heads"
        " (default: the paper-sized phantom cohort, planned, not rendered).",
    ),
    skill: str = typer.Option("0.6,0.6,0.8,0.85", help="--simulate: reader skills in (0, 1], comma-separated."),
    names: str = typer.Option("R1,R2,S1,S2", help="--simulate: reader names, comma-separated."),
    model_accuracy: float = typer.Option(
        0.85, min=0.0, max=1.0, help="--simulate: the simulated model's staging accuracy."
    ),
    bootstrap: int = typer.Option(DEFAULT_RESAMPLES, min=100, help="Bootstrap resamples for CIs and p-values."),
    seed: int = typer.Option(0, help="Seed of the simulation and of the bootstrap."),
) -> None:
    """Reader study (Tables VII, VIII, X; figure 5): per-reader F1, sensitivity, specificity with
    bootstrap CIs, p-values against the model, Cohen's kappa, confusion matrices, reading time."""
    from avn.evaluation.readers import analyse, load_study
    from avn.evaluation.readers_report import write_report
    from avn.readers_format import ReaderFormatError

    started = time.perf_counter()
    files = list(reader_files or []) + list(extra_readers or [])
    if simulate:
        truth, files, model = _simulate(out, data, skill, names, model_accuracy, seed)
    elif truth is None or not files:
        raise typer.BadParameter("give --truth and at least one --readers file, or --simulate")
    try:
        with console.status("reading the CSV files"):
            study = load_study(truth, files, model)
        with console.status(f"bootstrapping ({bootstrap} resamples per figure)"):
            document = analyse(study, resamples=bootstrap, seed=seed)
        with console.status("writing the report"):
            written = write_report(document, study, out)
    except ReaderFormatError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from error
    _print_summary(document)
    console.print(f"wrote {', '.join(str(p) for p in written.values())} in {time.perf_counter() - started:.1f} s")


def _simulate(
    out: Path, data: Path | None, skill: str, names: str, accuracy: float, seed: int
) -> tuple[Path, list[Path], Path]:
    from avn.evaluation.simulate_readers import heads_from_cohort, heads_from_dataset, parse_readers, simulate_study

    try:
        simulated = parse_readers(names, skill)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    with console.status("simulating readers"):
        heads = heads_from_dataset(data) if data is not None else heads_from_cohort(seed)
        try:
            study = simulate_study(heads, simulated, out, model_accuracy=accuracy, seed=seed)
        except ValueError as error:
            console.print(f"[red]error:[/] {error}")
            raise typer.Exit(1) from error
    console.print(
        f"simulated {len(simulated)} readers on {len(heads['E1'])} E1 and {len(heads['E2'])} E2 heads: "
        f"{study.truth}, {study.model}, {', '.join(p.name for p in study.readers)}"
    )
    return study.truth, study.readers, study.model


def _print_summary(document: dict) -> None:
    for entry in document["read_sets"]:
        f1 = entry["metrics"]["staging"]["f1"]
        typer.echo(
            f"{entry['reader']:>10} assisted={entry['mode']:<3} staging F1 {f1['estimate']:.4f} "
            f"({f1['low']:.4f}-{f1['high']:.4f}) on {entry['metrics']['heads']} heads"
        )
    for mode, model in document["model"].items():
        f1 = model["metrics"]["staging"]["f1"]
        typer.echo(
            f"{'model':>10} assisted={mode:<3} staging F1 {f1['estimate']:.4f} ({f1['low']:.4f}-{f1['high']:.4f})"
        )
