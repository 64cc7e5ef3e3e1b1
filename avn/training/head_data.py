"""Femoral-head crops and their labels for the four classifiers, built from a data-set folder.

Each radiograph is decoded once and every head on it is cut at the profile's scales with the
one crop function (``avn.pipeline.crop``), so training sees exactly what serving will send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avn.dataset.format import Dataset, FemoralHeadAnnotation, ImageRecord
from avn.dataset.images import read_radiograph
from avn.models.classifier import CLASSIFIER_TASKS, MULTI_LABEL_TASKS
from avn.pipeline.crop import SERVING_SCALE, crop_square, resample_scales


@dataclass(frozen=True)
class HeadRecord:
    annotation_id: int
    image_id: int
    subject_id: str
    view: str
    side: str
    stage: str
    notes: tuple[str, ...]
    typical: bool


@dataclass
class CropSet:
    """Crops (M, S, S) float16 in [0, 1]; ``head_index`` maps each crop to its head."""

    crops: np.ndarray
    head_index: np.ndarray
    heads: list[HeadRecord]

    def __len__(self) -> int:
        return len(self.crops)

    def labels(self, task: str) -> np.ndarray:
        """Class indices (M,) for single-label tasks, multi-hot (M, L) for the notes."""
        names = CLASSIFIER_TASKS[task]
        if task in MULTI_LABEL_TASKS:
            per_head = np.array([[name in head.notes for name in names] for head in self.heads], dtype=np.float32)
        else:
            per_head = np.array([names.index(_label_of(head, task)) for head in self.heads], dtype=np.int64)
        return per_head[self.head_index] if len(self.heads) else per_head

    def select_subjects(self, subjects: Iterable[str]) -> CropSet:
        wanted = set(subjects)
        keep_heads = [i for i, head in enumerate(self.heads) if head.subject_id in wanted]
        remap = np.full(len(self.heads), -1, dtype=np.int64)
        remap[keep_heads] = np.arange(len(keep_heads))
        mask = np.isin(self.head_index, keep_heads)
        return CropSet(self.crops[mask], remap[self.head_index[mask]], [self.heads[i] for i in keep_heads])


def _label_of(head: HeadRecord, task: str) -> str:
    return {"view": head.view, "side": head.side, "staging": head.stage}[task]


# (radiograph, head annotation) → the (x0, y0, x1, y1) box its crops are centred on.
BoxSource = Callable[[ImageRecord, FemoralHeadAnnotation], tuple[float, float, float, float]]


def annotated_box(_: ImageRecord, annotation: FemoralHeadAnnotation) -> tuple[float, float, float, float]:
    return annotation.xyxy


def training_scales(resamples: int) -> Callable[[HeadRecord], np.ndarray]:
    return lambda head: resample_scales(resamples, typical=head.typical)


def serving_scale(_: HeadRecord) -> np.ndarray:
    return np.array([SERVING_SCALE])


def build_crops(
    folder: Path,
    dataset: Dataset,
    subjects: Iterable[str],
    input_size: int,
    scales_of: Callable[[HeadRecord], np.ndarray],
    workers: int = 2,
    on_image: Callable[[], None] | None = None,
    box_of: BoxSource | None = None,
) -> CropSet:
    """Crops of every head of ``subjects``' radiographs.

    ``box_of`` chooses the square each head is cut around; the default is the annotated head box
    (what training always uses). The ablation passes fixed predefined regions instead.
    """
    box_of = box_of or annotated_box
    wanted = set(subjects)
    images = [image for image in dataset.images if image.subject_id in wanted]
    by_image: dict[int, list[FemoralHeadAnnotation]] = {}
    for annotation in dataset.annotations:
        by_image.setdefault(annotation.image_id, []).append(annotation)

    def crops_of(image: ImageRecord) -> list[tuple[HeadRecord, np.ndarray]]:
        pixels = read_radiograph(folder / image.file_name).pixels
        out = []
        for annotation in by_image.get(image.id, []):
            head = HeadRecord(
                annotation.id,
                image.id,
                image.subject_id,
                image.view,
                annotation.side,
                annotation.stage,
                tuple(annotation.notes),
                annotation.typical,
            )
            box = box_of(image, annotation)
            stack = np.stack([crop_square(pixels, box, s, input_size) for s in scales_of(head)])
            out.append((head, stack.astype(np.float16)))
        if on_image:
            on_image()
        return out

    # Decoding and resizing release the GIL, so threads overlap them without copying images.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = [item for per_image in pool.map(crops_of, images) for item in per_image]
    heads = [head for head, _ in results]
    if not results:
        return CropSet(np.zeros((0, input_size, input_size), np.float16), np.zeros(0, np.int64), [])
    crops = np.concatenate([stack for _, stack in results])
    head_index = np.concatenate([np.full(len(stack), i) for i, (_, stack) in enumerate(results)])
    return CropSet(crops, head_index, heads)
