"""``avn realcheck``: the served models on real radiographs, file by file.

The check set (``tests/data/real/``, sources and licences in ``docs/real-data.md``) holds real
adult hip and pelvic radiographs with hand-drawn femoral-head boxes, and non-hip radiographs
(chest, lower leg) as negative controls. Every file goes through the gateway's own pipeline
(decode → detect → choose heads → crop → classifiers → fusion) with the models of a store, and
is judged:

* a hip or pelvis passes when every annotated head is matched to a reported head by the
  evaluation's rule (:func:`avn.metrics.match_boxes`: one-to-one, IoU > 0.5); a reported head that
  matches nothing is shown, not penalised. Each annotated head's best IoU is reported too;
* a negative control passes when no stage is reported: the pipeline answers ``NoFemoralHead``.

The manifest (``manifest.json``, :mod:`avn.dataset.real`) is validated by pydantic; its fields are
documented in ``docs/real-data.md``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from avn.dataset.real import MANIFEST, Manifest, ManifestError, RealFile, load_manifest
from avn.metrics import MATCH_IOU, box_iou, match_boxes

DEFAULT_CHECK_SET = Path("tests/data/real")


@dataclass
class FileOutcome:
    """What the pipeline answered for one file and the verdict."""

    file: str
    kind: str
    passed: bool
    answer: str  # "heads" or the error type
    heads: list[dict] = field(default_factory=list)  # per reported head: box, score, side, stage, low_confidence
    best_iou: list[float] = field(default_factory=list)  # per annotated head
    message: str = ""


async def check_files(pipeline, folder: Path, manifest: Manifest) -> list[FileOutcome]:
    """Run every file of the manifest through ``pipeline`` (a :class:`avn.pipeline.pipeline.Pipeline`)."""
    from avn.pipeline.errors import DiagnosisError  # noqa: PLC0415 — the gateway imports torch-free avn parts only
    from avn.pipeline.results import DiagnoseOptions, DiagnoseRequest, ImagePayload  # noqa: PLC0415

    outcomes = []
    for entry in manifest.files:
        request = DiagnoseRequest(
            ImagePayload((folder / entry.file).read_bytes()), DiagnoseOptions(include_overlay=False)
        )
        try:
            result = await pipeline.diagnose(request)
        except DiagnosisError as error:
            outcomes.append(judge_error(entry, type(error).__name__, error.message))
            continue
        outcomes.append(judge_heads(entry, [_head_summary(head) for head in result.heads]))
    return outcomes


def _head_summary(head) -> dict:
    return {
        "box": [round(float(v), 1) for v in (head.box.x0, head.box.y0, head.box.x1, head.box.y1)],
        "score": round(float(head.score), 3),
        "side": head.side,
        "stage": head.stage,
        "stage_probability": round(float(head.stage_probability), 3),
        "low_confidence": bool(head.low_confidence),
    }


def judge_error(entry: RealFile, error_type: str, message: str) -> FileOutcome:
    """A file the pipeline refused: right for a negative control when no head was found."""
    passed = entry.is_negative and error_type == "NoFemoralHead"
    return FileOutcome(entry.file, entry.kind, passed, error_type, best_iou=[0.0] * len(entry.heads), message=message)


def judge_heads(entry: RealFile, heads: list[dict]) -> FileOutcome:
    """A file the pipeline answered with heads: right for a hip when every annotated head is found."""
    if entry.is_negative:
        return FileOutcome(
            entry.file, entry.kind, False, "heads", heads, message="a stage was reported on a non-hip radiograph"
        )
    truth = np.array([head.box for head in entry.heads], dtype=np.float64)
    found = np.array([head["box"] for head in heads], dtype=np.float64).reshape(-1, 4)
    best = box_iou(truth, found).max(axis=1) if len(found) else np.zeros(len(truth))
    passed = len(match_boxes(truth, found)) == len(truth)
    message = "" if passed else f"a femoral head was not found with IoU > {MATCH_IOU}"
    return FileOutcome(entry.file, entry.kind, passed, "heads", heads, [round(float(v), 3) for v in best], message)


def run_check(store: Path, folder: Path, device: str = "cpu", split: str | None = None) -> list[FileOutcome]:
    """Load the models of ``store`` in-process and check every file of ``folder`` (only those of
    ``split`` when given: the real training set's held-out ``validation`` radiographs)."""
    from avn.pipeline.pipeline import Pipeline  # noqa: PLC0415
    from avn.serving.inprocess import InProcessBackend  # noqa: PLC0415 — torch loads only when the check runs

    manifest = load_manifest(folder)
    if split is not None:
        manifest = Manifest(files=manifest.of_split(split))
        if not manifest.files:
            raise ManifestError(f"{folder / MANIFEST}: no file of split {split!r}")

    async def go() -> list[FileOutcome]:
        pipeline = Pipeline(InProcessBackend.from_folder(store, device))
        try:
            return await check_files(pipeline, folder, manifest)
        finally:
            await pipeline.close()

    return asyncio.run(go())


def heads_found(outcomes: list[FileOutcome]) -> tuple[int, int]:
    """(annotated heads matched, annotated heads) over the hips and pelves, by the check's rule."""
    found = sum(sum(iou > MATCH_IOU for iou in outcome.best_iou) for outcome in outcomes)
    return found, sum(len(outcome.best_iou) for outcome in outcomes)


def outcomes_json(outcomes: list[FileOutcome]) -> str:
    return json.dumps([asdict(outcome) for outcome in outcomes], indent=1)
