"""Run the serving pipeline over a data-set split and line its answers up with the ground truth.

Every radiograph goes through the service's own steps, :meth:`avn.pipeline.pipeline.Pipeline.run_steps`
(detect → choose heads → crop → classify → fuse), on a :class:`avn.pipeline.backend.ModelBackend`,
so a figure in the report is a figure of what the service answers. Only the output step (CAM PNGs,
overlay) and the cache are left out: they change no number.

A predicted head is matched to a truth head by the metrics core's one rule,
:func:`avn.metrics.match_boxes` (one-to-one, largest overlaps first, IoU > 0.5). The classifiers
are scored on matched heads; a truth head without a match counts as a detection miss, and at
subject level as a side with no diagnosis (a missed diseased hip lowers the subject-level
sensitivity, as it would in the clinic).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avn.dataset.format import Dataset, FemoralHeadAnnotation, ImageRecord, load_dataset
from avn.dataset.images import Radiograph, read_radiograph
from avn.metrics import MATCH_IOU, match_boxes
from avn.pipeline.backend import Detections, ModelBackend, ModelInfo
from avn.pipeline.crop import SERVING_SCALE
from avn.pipeline.errors import NoFemoralHead
from avn.pipeline.pipeline import Pipeline, Steps
from avn.pipeline.results import (
    DEFAULT_NOTE_THRESHOLD,
    DiagnoseOptions,
    Diagnosis,
    FemoralHead,
)
from avn.vocabulary import NOTES, SIDES, STAGES, VIEWS


@dataclass
class RadiographResult:
    """One radiograph: its truth, the detector's raw answer and the pipeline's diagnosis."""

    image: ImageRecord
    truth: list[FemoralHeadAnnotation]
    detections: Detections
    diagnosis: Diagnosis | None  # None: no femoral head found (the service answers NOT_FOUND)
    matches: list[tuple[int, int]] = field(default_factory=list)  # (truth index, predicted head index)

    @property
    def truth_boxes(self) -> np.ndarray:
        return np.array([a.xyxy for a in self.truth], dtype=np.float64).reshape(-1, 4)

    @property
    def predicted_heads(self) -> tuple[FemoralHead, ...]:
        return self.diagnosis.heads if self.diagnosis is not None else ()


@dataclass
class HeadTable:
    """Matched heads, one row each: truth and the pipeline's probabilities in vocabulary order."""

    subject_id: list[str]
    image_id: np.ndarray  # (n,)
    view_truth: np.ndarray  # (n,) index into VIEWS (the radiograph's view)
    side_truth: np.ndarray  # (n,) index into SIDES
    stage_truth: np.ndarray  # (n,) index into STAGES
    notes_truth: np.ndarray  # (n, 8) 0/1 in NOTES order
    view_probs: np.ndarray  # (n, 2) the view model on this head
    side_probs: np.ndarray  # (n, 2) the side model (before the image-layout side rule)
    side_served: np.ndarray  # (n,) index of the side the service answered (after that rule)
    stage_probs: np.ndarray  # (n, 4)
    notes_raw: np.ndarray  # (n, 8) the notes model alone
    notes_fused: np.ndarray  # (n, 8) × P(note's stage): what the service answers

    def __len__(self) -> int:
        return len(self.stage_truth)


@dataclass
class Collected:
    split: str
    radiographs: list[RadiographResult]
    heads: HeadTable
    models: list[ModelInfo]
    seconds: float = 0.0

    @property
    def truth_heads(self) -> int:
        return sum(len(r.truth) for r in self.radiographs)


# ---------------------------------------------------------------- one radiograph through the pipeline


async def diagnose_pixels(pipeline: Pipeline, radiograph: Radiograph, models: dict[str, ModelInfo]) -> Steps:
    """The detector's raw answer and the served diagnosis (without CAM PNGs) of one radiograph."""
    try:
        return await pipeline.run_steps(
            radiograph, DiagnoseOptions(), render=False, models=models, request_id="evaluation"
        )
    except NoFemoralHead:  # a DICOM header naming a body part without a hip: nothing detected
        return Steps(Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)), None)


def match_heads(
    truth_boxes: np.ndarray, heads: Sequence[FemoralHead], min_iou: float = MATCH_IOU
) -> list[tuple[int, int]]:
    """Sorted (truth index, head index) pairs under :func:`avn.metrics.match_boxes`."""
    return match_boxes(truth_boxes, [head.box.as_tuple() for head in heads], min_iou)


# ---------------------------------------------------------------- a whole split


def split_images(dataset: Dataset, split: str) -> list[ImageRecord]:
    if split not in dataset.splits:
        raise ValueError(f"the data set has no split {split!r}; it has {sorted(dataset.splits)}")
    images = dataset.images_in_split(split)
    if not images:
        raise ValueError(f"split {split!r} holds no radiographs")
    return images


async def collect_async(
    backend: ModelBackend,
    data_dir: Path,
    split: str,
    on_radiograph: Callable[[int, int], None] | None = None,
    crop_scale: float = SERVING_SCALE,
) -> Collected:
    """Every radiograph of ``split`` through the pipeline; reading the next file overlaps inference."""
    started = time.perf_counter()
    dataset = load_dataset(data_dir)
    images = split_images(dataset, split)
    models = {info.name: info for info in await backend.models()}
    pipeline = Pipeline(backend, crop_scale=crop_scale, note_threshold=DEFAULT_NOTE_THRESHOLD)
    by_image: dict[int, list[FemoralHeadAnnotation]] = {}
    for annotation in dataset.annotations:
        by_image.setdefault(annotation.image_id, []).append(annotation)
    results = []
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read_radiograph, Path(data_dir) / images[0].file_name)
        for index, image in enumerate(images):
            radiograph = await asyncio.wrap_future(pending)
            if index + 1 < len(images):  # decode the next file while the models run
                pending = reader.submit(read_radiograph, Path(data_dir) / images[index + 1].file_name)
            steps = await diagnose_pixels(pipeline, radiograph, models)
            detections, diagnosis = steps.detections, steps.diagnosis
            result = RadiographResult(image, by_image.get(image.id, []), detections, diagnosis)
            result.matches = match_heads(result.truth_boxes, result.predicted_heads)
            results.append(result)
            if on_radiograph:
                on_radiograph(index + 1, len(images))
    ordered_models = [models[name] for name in models]
    return Collected(split, results, head_table(results), ordered_models, time.perf_counter() - started)


def collect(
    backend: ModelBackend, data_dir: Path, split: str, on_radiograph: Callable[[int, int], None] | None = None
) -> Collected:
    return asyncio.run(collect_async(backend, data_dir, split, on_radiograph))


def head_table(results: Sequence[RadiographResult]) -> HeadTable:
    rows = [(result, result.truth[t], result.predicted_heads[p]) for result in results for t, p in result.matches]
    n = len(rows)

    def probabilities(values: Sequence[Sequence[float]], width: int) -> np.ndarray:
        return np.array(values, dtype=np.float64).reshape(n, width)

    return HeadTable(
        subject_id=[result.image.subject_id for result, _, _ in rows],
        image_id=np.array([result.image.id for result, _, _ in rows], dtype=int),
        view_truth=np.array([VIEWS.index(result.image.view) for result, _, _ in rows], dtype=int),
        side_truth=np.array([SIDES.index(truth.side) for _, truth, _ in rows], dtype=int),
        stage_truth=np.array([STAGES.index(truth.stage) for _, truth, _ in rows], dtype=int),
        notes_truth=np.array([[note in truth.notes for note in NOTES] for _, truth, _ in rows], dtype=int).reshape(
            n, len(NOTES)
        ),
        view_probs=probabilities([[p.probability for p in head.view_probabilities] for _, _, head in rows], len(VIEWS)),
        side_probs=probabilities([_side_row(head) for _, _, head in rows], len(SIDES)),
        side_served=np.array([SIDES.index(head.side) for _, _, head in rows], dtype=int),
        stage_probs=probabilities(
            [[p.probability for p in head.stage_probabilities] for _, _, head in rows], len(STAGES)
        ),
        notes_raw=probabilities([_notes_row(head, raw=True) for _, _, head in rows], len(NOTES)),
        notes_fused=probabilities([_notes_row(head, raw=False) for _, _, head in rows], len(NOTES)),
    )


def _side_row(head: FemoralHead) -> list[float]:
    """The side model's (P(left), P(right)) for this head, from the served side and its probability
    (for a head flipped by the image-layout side rule that probability is the model's, below 0.5)."""
    p = head.side_probability
    return [p, 1.0 - p] if head.side == SIDES[0] else [1.0 - p, p]


def _notes_row(head: FemoralHead, raw: bool) -> list[float]:
    by_note = {note.note: (note.raw_probability if raw else note.probability) for note in head.notes}
    return [by_note[note] for note in NOTES]
