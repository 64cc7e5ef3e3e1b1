"""``avn evaluate``: the paper's T-set evaluation of a model store or a training run, as one report.

Steps: load the five models into the in-process backend (the serving code), run the pipeline over
the split (:mod:`avn.evaluation.collect`), compute every table with intervals
(:mod:`avn.evaluation.tables`), take the temperatures from the model cards or fit them on the run's
validation fold (:mod:`avn.evaluation.temperature`), draw the figures and write ``report.json``,
``report.html`` and the PNGs (:mod:`avn.evaluation.report`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from avn.evaluation.bootstrap import DEFAULT_LEVEL, DEFAULT_RESAMPLES
from avn.evaluation.collect import Collected, collect
from avn.evaluation.figures import confusion_figure, reliability_figure, roc_figure, uncertainty_figure
from avn.evaluation.run_info import RunInfoError, read_task_metrics, repeats_of
from avn.evaluation.tables import (
    Intervals,
    IntervalSettings,
    calibration_section,
    detection_table,
    presence_collapse_table,
    staging_table,
    subject_level,
    uncertainty_deciles,
    view_side_notes_table,
)
from avn.evaluation.temperature import CALIBRATION_KEY, WEIGHTS_VERSION_KEY, calibrate_run
from avn.models.checkpoint import ModelCard, read_card
from avn.models.classifier import CLASSIFIER_TASKS
from avn.operating_points import evaluation_section
from avn.pipeline.backend import MODELS
from avn.serving.inprocess import InProcessBackend
from avn.training.runner import MODEL_FILE, dataset_fingerprint

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class EvaluationRequest:
    data_dir: Path
    split: str = "test"
    store: Path | None = None
    run: Path | None = None
    train_data: Path | None = None  # where the run's validation fold lives (default: data_dir)
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    level: float = DEFAULT_LEVEL
    store_temperature: bool = False  # write fitted temperatures into the run's checkpoints
    command: str = ""
    progress: ProgressCallback | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def report_progress(self, stage: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(stage, done, total)


def load_backend(request: EvaluationRequest) -> InProcessBackend:
    if request.store is None and request.run is None:
        raise ValueError("give the models to evaluate: --store DIR or --run DIR")
    backend = InProcessBackend.from_store(request.store) if request.store else InProcessBackend.from_run(request.run)
    missing = [name for name in MODELS if name not in backend.cards()]
    if missing:
        raise ValueError(f"{request.store or request.run} lacks the {', '.join(missing)} model(s)")
    return backend


class NothingToEvaluate(ValueError):
    """The pipeline matched no femoral head of the split: there is nothing to score."""


def evaluate(request: EvaluationRequest, backend: InProcessBackend | None = None) -> tuple[dict[str, Any], list]:
    """The report document (every number) and its figures. ``backend`` replaces the one loaded from
    ``request.store`` / ``request.run`` (tests wrap it)."""
    started = time.perf_counter()
    backend = backend or load_backend(request)
    cards = backend.cards()
    collected = collect(
        backend,
        request.data_dir,
        request.split,
        lambda done, total: request.report_progress("radiographs through the pipeline", done, total),
    )
    if len(collected.heads) == 0:
        raise NothingToEvaluate(
            f"the pipeline matched none of the {collected.truth_heads} femoral heads of split {request.split!r} "
            f"(IoU > 0.5) on {len(collected.radiographs)} radiographs: is the detector trained?"
        )
    fitted, calibration_notes = temperatures(request, cards)

    interval_started = time.perf_counter()
    settings = IntervalSettings(request.resamples, request.seed, request.level, repeated_cv_docs(request.run))
    intervals = Intervals(settings)
    request.report_progress("confidence intervals", 0, 1)
    subject_rows, subject_details = subject_level(collected, intervals)
    tables = {
        "table_ii": detection_table(collected, intervals),
        "table_iii": view_side_notes_table(collected.heads, intervals),
        "table_iv": presence_collapse_table(collected.heads, subject_rows, intervals),
        "table_v": staging_table(collected.heads, intervals),
    }
    interval_seconds = time.perf_counter() - interval_started
    request.report_progress("confidence intervals", 1, 1)

    calibration = calibration_section(collected.heads, {t: cards[t].temperature for t in CLASSIFIER_TASKS}, fitted)
    calibration["notes"] = calibration_notes
    uncertainty = uncertainty_deciles(collected.heads)
    confusion = {**tables["table_iv"]["confusion"], **tables["table_v"]["confusion"]}
    figures = [
        roc_figure(collected.heads),
        confusion_figure(confusion),
        uncertainty_figure(uncertainty),
        reliability_figure(calibration),
    ]
    document = {
        "title": "AVN-net T-set evaluation",
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": request.command,
        "data": data_section(request, collected),
        "models": model_section(request, cards),
        "intervals": {
            "method": "repeats" if settings.repeats_mode else "bootstrap",
            "resamples": request.resamples,
            "seed": request.seed,
            "level": request.level,
            "repeated_cv_tasks": sorted(settings.fold_docs),
            "bootstrap_units": {"detection": "radiographs", "heads": "femoral heads", "subject": "subjects"},
        },
        "tables": tables,
        "subject_level": subject_details,
        "confusion": confusion,
        "calibration": calibration,
        "operating_points": evaluation_section(
            collected.heads.stage_truth, collected.heads.stage_probs, cards["staging"].operating_points
        ),
        "uncertainty": uncertainty,
        "figures": [{"file": f.name, "title": f.title, "caption": f.caption} for f in figures],
        "timing": {
            "pipeline_seconds": round(collected.seconds, 2),
            "radiographs_per_second": round(len(collected.radiographs) / max(collected.seconds, 1e-9), 2),
            "interval_seconds": round(interval_seconds, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
        },
        "paper_note": "Columns marked 'paper' are the AVN-net paper's results on its hospital's real radiographs "
        "(T-set: 50 subjects, 179 radiographs, 279 heads); ours come from the data set named above.",
        **request.extra,
    }
    return document, figures


def temperatures(
    request: EvaluationRequest, cards: dict[str, ModelCard]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per classifier, the temperature to report 'after' with and where it came from.

    A temperature in the model card (from ``avn calibrate``) is used as served. Otherwise, with a run,
    it is fitted now on the deployed fold's validation crops (and stored when asked).
    """
    fitted, notes = {}, []
    for task in CLASSIFIER_TASKS:
        calibration = cards[task].extra.get(CALIBRATION_KEY)
        if calibration:
            fitted[task] = {
                "temperature": cards[task].temperature,
                "samples": calibration.get("samples"),
                "source": f"model card (avn calibrate, fold {calibration.get('fold')})",
            }
    missing = [task for task in CLASSIFIER_TASKS if task not in fitted]
    if not missing:
        return fitted, notes
    if request.run is None:
        notes.append(
            f"{', '.join(missing)}: no temperature in the model card and no --run to fit one on; "
            "run `avn calibrate --run RUN --data DIR` or add --run"
        )
        return fitted, notes
    mismatched = [task for task in missing if request.store and not same_weights(cards[task], request.run, task)]
    if mismatched:
        notes.append(f"{', '.join(mismatched)}: the store's weights are not the run's; no temperature fitted for them")
        missing = [task for task in missing if task not in mismatched]
        if not missing:
            return fitted, notes
    train_data = request.train_data or request.data_dir
    try:
        results = calibrate_run(
            request.run,
            train_data,
            missing,
            write=request.store_temperature,
            on_image=_counter(request, "validation crops for temperature scaling"),
        )
    except (RunInfoError, FileNotFoundError) as error:
        notes.append(f"temperature not fitted: {error}")
        return fitted, notes
    for task, result in results.items():
        if "warning" in result:
            notes.append(result["warning"])
        stored = (
            f"; stored in {request.run}/{task}/model.pt as version {result['version']}" if "version" in result else ""
        )
        fitted[task] = {**result, "source": f"fitted by this evaluation on validation fold {result['fold']}{stored}"}
    return fitted, notes


def same_weights(card: ModelCard, run: Path, task: str) -> bool:
    """Whether a served card and the run's checkpoint hold the same weights (temperature aside)."""
    path = Path(run) / task / MODEL_FILE
    if not path.is_file():
        return False
    run_card = read_card(path)
    return run_card.extra.get(WEIGHTS_VERSION_KEY, run_card.version) == card.extra.get(
        WEIGHTS_VERSION_KEY, card.version
    )


def _counter(request: EvaluationRequest, stage: str) -> Callable[[], None]:
    state = {"done": 0}

    def tick() -> None:
        state["done"] += 1
        request.report_progress(stage, state["done"], 0)

    return tick


def repeated_cv_docs(run: Path | None) -> dict[str, dict[str, Any]]:
    """metrics.json of each task trained with ≥ 2 CV repeats (then CIs are over repeats)."""
    if run is None:
        return {}
    docs = {}
    for task in MODELS:
        try:
            doc = read_task_metrics(run, task)
        except RunInfoError:
            continue
        if repeats_of(doc) >= 2:
            docs[task] = doc
    return docs


def data_section(request: EvaluationRequest, collected: Collected) -> dict[str, Any]:
    subjects = {r.image.subject_id for r in collected.radiographs}
    views = [r.image.view for r in collected.radiographs]
    return {
        "dir": str(request.data_dir),
        "split": request.split,
        "fingerprint": dataset_fingerprint(Path(request.data_dir)),
        "subjects": len(subjects),
        "radiographs": len(collected.radiographs),
        "radiographs_AP": views.count("AP"),
        "radiographs_FL": views.count("FL"),
        "truth_heads": collected.truth_heads,
        "matched_heads": len(collected.heads),
        "radiographs_without_head": sum(r.diagnosis is None for r in collected.radiographs),
    }


def model_section(request: EvaluationRequest, cards: dict[str, ModelCard]) -> dict[str, Any]:
    return {
        "source": "store" if request.store else "run",
        "path": str(request.store or request.run),
        "run": str(request.run) if request.run else None,
        "cards": {
            name: {
                "version": card.version,
                "weights_version": card.extra.get(WEIGHTS_VERSION_KEY, card.version),
                "architecture": card.architecture,
                "input_size": card.input_size,
                "temperature": card.temperature,
                "training_data_hash": card.training_data_hash,
                "created": card.created,
            }
            for name, card in cards.items()
        },
    }
