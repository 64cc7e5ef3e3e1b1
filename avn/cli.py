"""The ``avn`` command line: one entry point whose sub-commands later stages extend."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from avn.dataset.cli import data_app

app = typer.Typer(help="AVN-net serving: femoral-head AVN staging from pelvic radiographs.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)

DEMO_DATA = Path("data/demo")


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@app.command()
def phantom(
    out: Path = typer.Option(..., "--out", help="Folder to write the data set into."),
    subjects: int = typer.Option(20, min=1, help="Number of subjects (splits scale with it)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives identical files."),
    image_format: str = typer.Option("dicom", "--format", help="dicom or png (16-bit grey)."),
    workers: int = typer.Option(0, min=0, help="Worker processes (0 = all cores)."),
    scale: float = typer.Option(1.0, min=0.05, max=1.0, help="Shrink radiographs (tests); 1 = full size."),
) -> None:
    """Write a phantom data set of pelvic radiographs with exact ground truth."""
    from avn.phantom.build import PhantomOptions, build_phantom

    try:
        options = PhantomOptions(subjects=subjects, seed=seed, image_format=image_format, scale=scale)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    started = time.perf_counter()
    with progress_bar() as progress:
        task = progress.add_task("rendering radiographs", total=None)
        dataset = build_phantom(
            options,
            out,
            workers=workers or None,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    elapsed = time.perf_counter() - started
    console.print(
        f"wrote {len(dataset.images)} radiographs, {len(dataset.annotations)} femoral heads "
        f"of {subjects} subjects to {out} in {elapsed:.1f} s"
    )


@app.command("phantom-grid")
def phantom_grid(
    out: Path = typer.Option(Path("docs/img/phantom_grid.png"), help="PNG file to write."),
    seed: int = typer.Option(0, help="Seed of the subjects drawn."),
) -> None:
    """Draw the documentation grid: AP and frog-leg radiographs for each stage, with close-ups."""
    from avn.phantom.grid import make_grid

    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(out, seed=seed)
    console.print(f"wrote {out}")


@app.command()
def run(
    data: Path = typer.Option(DEMO_DATA, help="Demo data set folder (built when missing)."),
    subjects: int = typer.Option(20, min=1, help="Subjects in the demo data set."),
    seed: int = typer.Option(0),
) -> None:
    """The main job: build whatever is missing (demo phantom data set), then validate it."""
    from avn.dataset.check import check_dataset

    if not (data / "annotations.json").exists():
        console.print(f"[bold]demo data set missing:[/] building {subjects} phantom subjects in {data}")
        phantom(out=data, subjects=subjects, seed=seed, image_format="dicom", workers=0, scale=1.0)
    else:
        console.print(f"demo data set present in {data}")
    report = check_dataset(data)
    typer.echo(report.format_text())
    if not report.ok:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
