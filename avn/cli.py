"""The ``avn`` command line: one entry point whose sub-commands later stages extend."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from avn.dataset.cli import data_app
from avn.dataset.real import REAL_TRAINING_SET
from avn.evaluation.ablation_cli import ablation
from avn.evaluation.cli import calibrate, evaluate, operating_points
from avn.evaluation.readers_cli import readers
from avn.progress import StageBars, console, progress_bar
from gateway.cli import bench, capacity, config_app, diagnose, dicom_node, keys_app, prepare_local_key, serve

app = typer.Typer(help="AVN-net serving: femoral-head AVN staging from pelvic radiographs.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.command()(diagnose)
app.command()(evaluate)
app.command()(calibrate)
app.command("operating-points")(operating_points)
app.command()(ablation)
app.command()(readers)
app.command()(serve)
app.command("dicom-node")(dicom_node)
app.command()(bench)
app.command()(capacity)
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")

DEMO_DATA = Path("data/demo")
TRAINING_DATA = Path("data/phantom-quick")
QUICK_RUN = Path("runs/quick")
REAL_CHECK_SET = Path("tests/data/real")


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
    """Draw the documentation grids: AP and frog-leg radiographs for each stage with close-ups, and
    beside it (``phantom_variation.png``) one tile per domain-randomisation factor."""
    from avn.phantom.grid import make_grid, make_variation_grid

    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(out, seed=seed)
    variation = make_variation_grid(out.with_name("phantom_variation.png"), seed=seed)
    console.print(f"wrote {out} and {variation}")


TRAIN_TASKS = ("detection", "view", "side", "staging", "notes", "all")


@app.command()
def train(
    task: str = typer.Argument(..., help="detection, view, side, staging, notes or all."),
    data: Path = typer.Option(..., "--data", help="Data-set folder (docs/dataset.md)."),
    out: Path = typer.Option(..., "--out", help="Run folder: <task>/model.pt and metrics.json."),
    profile: str = typer.Option("quick", help="quick (CPU minutes) or paper (SPEC §2)."),
    folds: int = typer.Option(0, min=0, help="k of the subject-grouped CV (0 = the profile's)."),
    repeats: int = typer.Option(0, min=0, help="CV repeats with different seeds (0 = the profile's)."),
    seed: int = typer.Option(0, help="Seed of folds, initialisation and augmentation."),
    real_hips: Path = typer.Option(
        REAL_TRAINING_SET,
        help="Real radiographs with drawn heads added to the detector's training (docs/real-data.md).",
    ),
    phantom_only: bool = typer.Option(False, "--phantom-only", help="Train the detector on the phantom alone."),
) -> None:
    """Train models with subject-grouped cross-validation; reruns resume where they stopped."""
    from avn.training.profiles import get_profile
    from avn.training.runner import TASK_ORDER, TrainingError, prepare_context
    from avn.training.runner import train as train_tasks

    if task not in TRAIN_TASKS:
        raise typer.BadParameter(f"unknown task {task!r}; expected one of {TRAIN_TASKS}")
    try:
        chosen = get_profile(profile)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    tasks = list(TASK_ORDER) if task == "all" else [task]
    with progress_bar() as progress:
        report = StageBars(progress)
        try:
            context = prepare_context(
                data,
                out,
                chosen,
                seed,
                folds or None,
                repeats or None,
                reporter=report,
                logger=progress.console.print,
                real_hips=None if phantom_only else real_hips,
            )
            results = train_tasks(tasks, context)
        except TrainingError as error:
            console.print(f"[red]error:[/] {error}")
            raise typer.Exit(1) from error
    for name, result in results.items():
        console.print(f"{name}: {result['version']} T-set {_headline_text(name, result)}")


def _headline_text(task: str, result: dict) -> str:
    from avn.training.runner import headline_figures

    figures = headline_figures(task, result["test"])
    return ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in figures.items())


@app.command()
def metrics(run_dir: Path = typer.Option(..., "--run", help="Run folder written by `avn train`.")) -> None:
    """Print the run's T-set figures beside the paper's as a Markdown table."""
    import json

    from avn.paper import PAPER_TSET
    from avn.training.runner import headline_figures

    typer.echo("| model | figure | T-set (phantom) | paper (real data) | training time |")
    typer.echo("|---|---|---|---|---|")
    for task in TRAIN_TASKS[:-1]:
        path = run_dir / task / "metrics.json"
        if not path.exists():
            continue
        document = json.loads(path.read_text())
        for figure, value in headline_figures(task, document["test"]).items():
            paper = PAPER_TSET.get((task, figure))
            ours = "n/a" if value is None else f"{value:.4f}"
            reference = "—" if paper is None else f"{paper:.4f}"
            typer.echo(
                f"| {task} | {figure} | {ours} | {reference} | {document.get('train_seconds', 0) / 60:.1f} min |"
            )


@app.command("build-store")
def build_store_command(
    run_dir: Path | None = typer.Option(None, "--run", help="Run folder written by `avn train`."),
    out: Path = typer.Option(Path("model_store"), "--out", help="Where the .mar archives go."),
    timing_only: bool = typer.Option(
        False,
        "--timing-only",
        help="Untrained (random) weights in the --profile's shapes, for `avn bench` timing only; no --run.",
    ),
    profile: str = typer.Option("paper", help="With --timing-only: the shapes (paper: 224-px crops; quick: 96)."),
    data: Path = typer.Option(
        TRAINING_DATA, "--data", help="The data set the run was trained on: its validation crops check the forms."
    ),
    optimise: bool = typer.Option(
        True,
        "--optimise/--no-optimise",
        help="Serve each classifier in the fastest form within 0.005 AUC of fp32 (int8, bf16…); "
        "--no-optimise serves fp32 as trained.",
    ),
) -> None:
    """Package the five trained models as TorchServe archives (detection, view, side, staging, notes)."""
    from avn.optimisation import Optimisation
    from avn.store import StoreError, build_store
    from avn.timing_store import TIMING_ONLY, build_timing_store

    if (run_dir is None) == (not timing_only):
        raise typer.BadParameter("give either --run RUN (trained models) or --timing-only (untrained)")
    optimisation = Optimisation(None if timing_only else data, report=console.print) if optimise else None
    if optimisation is not None:
        console.print("choosing each classifier's served form (timed here, checked against fp32)")
    try:
        archives = (
            build_timing_store(out, profile, optimisation=optimisation)
            if timing_only
            else build_store(run_dir, out, optimisation=optimisation)
        )
    except (StoreError, ValueError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from error
    for task, path in archives.items():
        console.print(f"{task}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if timing_only:
        console.print(f"[bold yellow]{TIMING_ONLY}[/] ({profile} profile's shapes): for `avn bench` only")


@app.command()
def realcheck(
    store: Path = typer.Option(Path("model_store"), "--store", help="Model store (*.mar) or training run folder."),
    data: Path = typer.Option(REAL_CHECK_SET, "--data", help="Check-set folder with its manifest.json."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write every outcome as JSON here."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 unless every file passes."),
    split: str | None = typer.Option(
        None,
        help="Only this split's files (held-out real pelves: --data datasets/real-hips --split validation).",
    ),
) -> None:
    """The models of a store on real radiographs: per file, what was found and whether it passes."""
    from avn.dataset.real import ManifestError
    from avn.evaluation.realcheck import outcomes_json, run_check

    if not store.is_dir():
        raise typer.BadParameter(f"{store} is not a folder (build one with `avn build-store`)", param_hint="--store")
    try:
        outcomes = run_check(store, data, split=split)
    except ManifestError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error
    print_realcheck(outcomes)
    if json_out:
        json_out.write_text(outcomes_json(outcomes))
    if strict and not all(outcome.passed for outcome in outcomes):
        raise typer.Exit(1)


def print_realcheck(outcomes) -> None:
    from rich.table import Table

    from avn.evaluation.realcheck import heads_found

    table = Table(title="real radiographs")
    for column in ("file", "kind", "answer", "best IoU per head", "heads found (score, side, stage)", "verdict"):
        table.add_column(column)
    for outcome in outcomes:
        found = "; ".join(
            f"{h['score']:.2f} {h['side']} {h['stage']}" + (" low-confidence" if h["low_confidence"] else "")
            for h in outcome.heads
        )
        verdict = "[green]pass[/]" if outcome.passed else f"[red]FAIL[/] {outcome.message}"
        ious = ", ".join(f"{v:.2f}" for v in outcome.best_iou) or "—"
        table.add_row(outcome.file, outcome.kind, outcome.answer, ious, found or "—", verdict)
    console.print(table)
    passed = sum(outcome.passed for outcome in outcomes)
    found, annotated = heads_found(outcomes)
    console.print(f"{passed} of {len(outcomes)} files pass; {found} of {annotated} annotated heads found (IoU > 0.5)")


@app.command()
def run(
    data: Path = typer.Option(DEMO_DATA, help="Demo data set folder (built when missing)."),
    subjects: int = typer.Option(20, min=1, help="Subjects in the demo data set."),
    training_data: Path = typer.Option(TRAINING_DATA, help="Phantom the quick models train on."),
    run_dir: Path = typer.Option(QUICK_RUN, "--run", help="Run folder of the quick models."),
    store: Path = typer.Option(Path("model_store"), help="Where the TorchServe archives go."),
    seed: int = typer.Option(0),
    then_serve: bool = typer.Option(True, "--serve/--no-serve", help="End by serving (`avn serve` on the store)."),
) -> None:
    """The main job: build whatever is missing (demo data set, training phantom, quick models,
    model store), validating each step, then serve diagnoses over gRPC and REST."""
    from avn.training.profiles import QUICK

    ensure_phantom(data, subjects, seed, image_format="dicom", scale=1.0, purpose="demo data set")
    ensure_phantom(
        training_data,
        QUICK.phantom_subjects,
        seed + 1,
        image_format="png",
        scale=QUICK.phantom_scale,
        purpose="training phantom",
    )
    if not all((run_dir / task / "model.pt").exists() for task in TRAIN_TASKS[:-1]):
        console.print(f"[bold]models missing:[/] training the quick profile into {run_dir}")
        train(
            task="all",
            data=training_data,
            out=run_dir,
            profile="quick",
            folds=0,
            repeats=0,
            seed=seed,
            real_hips=REAL_TRAINING_SET,
            phantom_only=False,
        )
    if store_is_stale(run_dir, store):
        console.print(f"[bold]model store missing or older than the models:[/] building {store}")
        build_store_command(
            run_dir=run_dir, out=store, timing_only=False, profile="paper", data=training_data, optimise=True
        )
    if (REAL_CHECK_SET / "manifest.json").exists():
        console.print(f"[bold]real radiographs:[/] the store on {REAL_CHECK_SET} (docs/real-data.md)")
        realcheck(store=store, data=REAL_CHECK_SET, json_out=None, strict=False, split=None)
    console.print(f"ready: demo data {data}, models {run_dir}, store {store}")
    if then_serve:
        console.print("[bold]serving:[/] TorchServe on the store, then gRPC and REST (Ctrl-C stops)")
        prepare_local_key()
        serve(store=store)  # ports, host and the rest: AVN_* environment, settings file or defaults


def ensure_phantom(folder: Path, subjects: int, seed: int, image_format: str, scale: float, purpose: str) -> None:
    """Build a phantom data set unless one is there, then insist that it passes the checker."""
    from avn.dataset.check import check_dataset

    if not (folder / "annotations.json").exists():
        console.print(f"[bold]{purpose} missing:[/] building {subjects} phantom subjects in {folder}")
        phantom(out=folder, subjects=subjects, seed=seed, image_format=image_format, workers=0, scale=scale)
    report = check_dataset(folder)
    console.print(f"{purpose} {folder}:")
    typer.echo(report.format_text())
    if not report.ok:
        raise typer.Exit(1)


def store_is_stale(run_dir: Path, store: Path) -> bool:
    from avn.models.checkpoint import TASKS

    for task in TASKS:
        archive, model = store / f"{task}.mar", run_dir / task / "model.pt"
        if not archive.exists() or archive.stat().st_mtime < model.stat().st_mtime:
            return True
    return False


if __name__ == "__main__":
    app()
