"""The ``avn ablation`` command (Table VI); the work lives in ``avn.evaluation.ablation``.

Heavy imports (torch, the training code) happen inside the command so ``avn --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from avn.evaluation.bootstrap import DEFAULT_RESAMPLES
from avn.progress import StageBars, console, progress_bar


def ablation(
    data: Path = typer.Option(
        ..., "--data", help="Data-set folder with train and test splits (e.g. data/phantom-quick)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: report.html, report.json, table.md, figure; resumable."
    ),
    profile: str = typer.Option("quick", help="quick or paper: crop size, epochs and the reference N."),
    resamples: str = typer.Option("2,3,5,10,20", help="Comma-separated N values to train (with detection)."),
    no_detection: bool = typer.Option(
        True, "--no-detection/--skip-no-detection", help="Also train on fixed predefined crops."
    ),
    epochs: int = typer.Option(0, min=0, help="Staging epochs per variant (0 = the profile's)."),
    budget: str = typer.Option(
        "equal-epochs", help="equal-epochs (the paper's design) or equal-steps (fewer epochs for large N)."
    ),
    bootstrap: int = typer.Option(DEFAULT_RESAMPLES, min=100, help="Bootstrap resamples for CIs and p-values."),
    view_model: Path = typer.Option(
        None, help="Existing view model.pt to start staging from (default: train one in OUT/view)."
    ),
    folds: int = typer.Option(0, min=0, help="k of the subject-grouped CV (0 = the profile's)."),
    repeats: int = typer.Option(0, min=0, help="CV repeats (0 = the profile's)."),
    seed: int = typer.Option(0, help="Seed of folds, training and bootstrap."),
) -> None:
    """Staging ablation (Table VI): fixed crops without detection and N resamples, F1 with CI and p-values."""
    from avn.evaluation.ablation import TABLE_HEADERS, AblationOptions, run_ablation, table_rows
    from avn.evaluation.html import markdown_table
    from avn.training.profiles import get_profile
    from avn.training.runner import TrainingError

    try:
        chosen = get_profile(profile)
        counts = tuple(int(value) for value in resamples.split(",") if value.strip())
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    if not counts or min(counts) < 1:
        raise typer.BadParameter("--resamples needs positive integers, e.g. 2,3,5")
    with progress_bar() as progress:
        report = StageBars(progress)
        options = AblationOptions(
            data=data,
            out=out,
            profile=chosen,
            seed=seed,
            resample_counts=counts,
            include_no_detection=no_detection,
            epochs=epochs or None,
            budget=budget,
            bootstrap_resamples=bootstrap,
            view_model=view_model,
            folds=folds or None,
            repeats=repeats or None,
            reporter=report,
            logger=progress.console.print,
        )
        try:
            document = run_ablation(options)
        except (TrainingError, ValueError) as error:
            console.print(f"[red]error:[/] {error}")
            raise typer.Exit(1) from error
    typer.echo(markdown_table(TABLE_HEADERS, table_rows(document)))
    console.print(
        f"wrote {out / 'report.html'}, {out / 'report.json'}, {out / 'table.md'}"
        f" in {document['seconds']['total'] / 60:.1f} min"
    )
