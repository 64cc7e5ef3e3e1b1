"""The training loop of the femoral-head detector (torchvision SSD) on one fold.

Radiographs are decoded once and kept twice: letterboxed to the detector input exactly as serving
prepares them (``prepare_detector_input``), for validation and the T-set, and shrunk to a larger
source size for training. Each training epoch draws, per radiograph, a new field of view (heads
from about 15 to 120 input pixels, off-centre, sometimes none), a horizontal flip (the detector
does not name sides), anatomical clutter and a random processing chain (:mod:`avn.training.domain`),
then prepares the result the serving way. The learning rate follows a warm-up and cosine decay
fixed in advance over all steps (:func:`scheduled_lr`). Validation computes F1 at IoU 0.5, 0.6 and 0.7 on the full-size
boxes; their mean picks the best epoch, favouring tight boxes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avn.dataset.format import Dataset
from avn.dataset.images import read_radiograph
from avn.dataset.real import load_manifest
from avn.letterbox import shrink_to_letterbox
from avn.metrics import DEFAULT_IOU_THRESHOLDS, detection_prf
from avn.models.detector import (
    FH_CLASS,
    PROSTHESIS_CLASS,
    FemoralHeadDetector,
    boxes_to_input,
    build_detector,
    head_candidates,
    letterbox_canvas,
    prepare_detector_input,
)
from avn.training.domain import cut_field_of_view, random_clutter, random_field_of_view, randomise_photometry
from avn.training.fold_state import run_epochs, training_device
from avn.training.profiles import Profile

IOU_THRESHOLDS = DEFAULT_IOU_THRESHOLDS  # validation scores what Table II reports
MIN_CANDIDATE_SCORE = 0.05
CANDIDATE_THRESHOLDS = np.round(np.arange(0.1, 0.95, 0.05), 2)
SOURCE_SCALE = 2  # training sources are kept at this many times the detector input (zoom-in detail)


@dataclass
class DetectionSet:
    """Radiographs prepared for the detector.

    ``inputs`` (N, S, S) float16 are the serving-identical inputs, with ``input_boxes`` in their
    coordinates and ``original_boxes`` in the radiographs' pixels; ``sources`` are the radiographs
    shrunk to SOURCE_SCALE × S (float16, aspect kept) with ``source_boxes``, for training: the
    heads, then the metal heads of hip prostheses, told apart by ``source_labels`` (FH_CLASS or
    PROSTHESIS_CLASS). Validation and the T-set score heads only.
    """

    inputs: np.ndarray
    input_boxes: list[np.ndarray]
    original_boxes: list[np.ndarray]
    factors: np.ndarray  # (N, 4): original → input box factors
    subject_ids: list[str]
    sources: list[np.ndarray]
    source_boxes: list[np.ndarray]
    source_labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.inputs)

    def select_subjects(self, subjects) -> DetectionSet:
        wanted = set(subjects)
        keep = [i for i, s in enumerate(self.subject_ids) if s in wanted]
        return DetectionSet(
            self.inputs[keep],
            [self.input_boxes[i] for i in keep],
            [self.original_boxes[i] for i in keep],
            self.factors[keep],
            [self.subject_ids[i] for i in keep],
            [self.sources[i] for i in keep],
            [self.source_boxes[i] for i in keep],
            [self.source_labels[i] for i in keep],
        )

    def __add__(self, other: DetectionSet) -> DetectionSet:
        if not len(other):
            return self
        if not len(self):
            return other
        return DetectionSet(
            np.concatenate([self.inputs, other.inputs]),
            self.input_boxes + other.input_boxes,
            self.original_boxes + other.original_boxes,
            np.concatenate([self.factors, other.factors]),
            self.subject_ids + other.subject_ids,
            self.sources + other.sources,
            self.source_boxes + other.source_boxes,
            self.source_labels + other.source_labels,
        )


PreparedRadiograph = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def prepare_radiograph(
    pixels: np.ndarray, heads: np.ndarray, implants: np.ndarray, input_size: int
) -> PreparedRadiograph:
    """One radiograph's entries of a :class:`DetectionSet`: the serving input with its head boxes,
    the original boxes, the box factors, and the training source with heads and prostheses."""
    tensor, geometry = prepare_detector_input(pixels, input_size)
    source, source_geometry = shrink_to_letterbox(pixels, SOURCE_SCALE * input_size)
    labels = np.array([FH_CLASS] * len(heads) + [PROSTHESIS_CLASS] * len(implants), dtype=np.int64)
    return (
        tensor[0].numpy().astype(np.float16),
        boxes_to_input(heads, geometry).numpy(),
        heads,
        geometry.box_factors(),
        source.astype(np.float16),
        boxes_to_input(np.concatenate([heads, implants]), source_geometry).numpy(),
        labels,
    )


def _detection_set(prepared: list[PreparedRadiograph], subject_ids: list[str], input_size: int) -> DetectionSet:
    if not prepared:
        empty = np.zeros((0, input_size, input_size), np.float16)
        return DetectionSet(empty, [], [], np.zeros((0, 4)), [], [], [], [])
    return DetectionSet(
        np.stack([p[0] for p in prepared]),
        [p[1] for p in prepared],
        [p[2] for p in prepared],
        np.stack([p[3] for p in prepared]),
        list(subject_ids),
        [p[4] for p in prepared],
        [p[5] for p in prepared],
        [p[6] for p in prepared],
    )


def build_detection_set(
    folder: Path, dataset: Dataset, subjects, input_size: int, on_image: Callable[[], None] | None = None
) -> DetectionSet:
    wanted = set(subjects)
    images = [image for image in dataset.images if image.subject_id in wanted]
    boxes_of: dict[int, list] = {}
    for annotation in dataset.annotations:
        boxes_of.setdefault(annotation.image_id, []).append(annotation.xyxy)

    def prepare(image) -> PreparedRadiograph:
        pixels = read_radiograph(folder / image.file_name).pixels
        heads = np.array(boxes_of.get(image.id, []), dtype=np.float32).reshape(-1, 4)
        implants = np.array(image.prosthetic_heads_xyxy(), dtype=np.float32).reshape(-1, 4)
        prepared = prepare_radiograph(pixels, heads, implants, input_size)
        if on_image:
            on_image()
        return prepared

    with ThreadPoolExecutor(max_workers=2) as pool:
        prepared = list(pool.map(prepare, images))
    return _detection_set(prepared, [image.subject_id for image in images], input_size)


REAL_SUBJECT_PREFIX = "real:"  # real radiographs' subject ids: never a phantom subject's


def build_real_detection_set(folder: Path, input_size: int, split: str = "train") -> DetectionSet:
    """One split of the real training set (:mod:`avn.dataset.real`): hand-drawn heads and
    prosthetic balls, each radiograph its own subject."""
    entries = load_manifest(folder).of_split(split)

    def prepare(entry) -> PreparedRadiograph:
        pixels = read_radiograph(folder / entry.file).pixels
        return prepare_radiograph(pixels, entry.head_boxes(), entry.prosthesis_boxes(), input_size)

    with ThreadPoolExecutor(max_workers=2) as pool:
        prepared = list(pool.map(prepare, entries))
    return _detection_set(prepared, [REAL_SUBJECT_PREFIX + entry.file for entry in entries], input_size)


def augment_detection(
    source: np.ndarray,
    boxes: np.ndarray,
    input_size: int,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A new field of view, flip and processing chain of one radiograph, prepared the serving way.

    ``source`` and ``boxes`` are in the same pixels, ``labels`` their classes (all FH when None);
    the returned boxes are in input coordinates, with the labels of those left in the field. The
    field is aimed at femoral heads only; prostheses appear where the field takes them in.
    """
    labels = np.full(len(boxes), FH_CLASS, np.int64) if labels is None else np.asarray(labels, np.int64)
    window = random_field_of_view(source.shape, np.asarray(boxes)[labels == FH_CLASS], input_size, rng)
    image, boxes, kept = cut_field_of_view(source.astype(np.float32), boxes, window, rng)
    if rng.random() < 0.5:
        image = image[:, ::-1]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = image.shape[1] - boxes[:, [2, 0]]
    content, geometry = shrink_to_letterbox(np.ascontiguousarray(image), input_size)
    content = randomise_photometry(random_clutter(content, rng), rng)
    return letterbox_canvas(content, input_size), boxes_to_input(boxes, geometry), torch.from_numpy(labels[kept])


@torch.no_grad()
def detect_prepared(
    detector: FemoralHeadDetector, data: DetectionSet, batch_size: int = 16
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes in original pixels, scores) per radiograph of a prepared set."""
    detector.eval()
    results = []
    for start in range(0, len(data), batch_size):
        device = next(detector.parameters()).device
        batch = [
            torch.from_numpy(x.astype(np.float32))[None].expand(3, -1, -1).to(device)
            for x in data.inputs[start : start + batch_size]
        ]
        for offset, output in enumerate(detector.model(batch)):
            output = {key: value.cpu() for key, value in output.items()}
            keep = head_candidates(output)
            factors = torch.from_numpy(data.factors[start + offset]).float()
            results.append(((output["boxes"][keep] / factors).numpy(), output["scores"][keep].numpy()))
    return results


def detection_metrics(
    detector: FemoralHeadDetector, data: DetectionSet, score_threshold: float = 0.5
) -> dict[str, Any]:
    predictions = detect_prepared(detector, data)
    prf = detection_prf(predictions, data.original_boxes, IOU_THRESHOLDS, score_threshold=score_threshold)
    return {str(k): v for k, v in prf.items()}


def choose_score_threshold(detector: FemoralHeadDetector, val: DetectionSet) -> float:
    """The operating score threshold with the best validation F1 (mean over IoU thresholds).

    A detector trained for a few CPU minutes localises well before its confidences are
    calibrated; picking the cut on validation data, never on the T-set, keeps both honest.
    """
    detector.configure_postprocessing(top_k=detector.top_k, min_score=MIN_CANDIDATE_SCORE, nms_iou=detector.nms_iou)
    predictions = detect_prepared(detector, val)
    best_threshold, best_f1 = 0.5, -1.0
    for threshold in CANDIDATE_THRESHOLDS:
        prf = detection_prf(predictions, val.original_boxes, IOU_THRESHOLDS, score_threshold=threshold)
        f1 = float(np.mean([m["f1"] for m in prf.values()]))
        if f1 > best_f1 + 1e-9:  # ties keep the lower cut: a missed head costs more than a spare box
            best_threshold, best_f1 = float(threshold), f1
    return best_threshold


def detection_score(metrics: dict[str, Any]) -> float:
    return float(np.mean([metrics[str(t)]["f1"] for t in IOU_THRESHOLDS]))


def fit_detector(
    train: DetectionSet,
    val: DetectionSet,
    profile: Profile,
    work_dir: Path,
    seed: int,
    backbone: str | None = None,
    epochs: int | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
):
    torch.manual_seed(seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    detector = build_detector(backbone or profile.detector_backbone).to(training_device())
    # Channels-last convolutions: the same model in another memory order, a third faster per
    # step on the CPU (MobileNet's depthwise convolutions gain most) and on GPUs with tensor cores.
    detector.model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(
        detector.parameters(), lr=profile.learning_rate * 10, weight_decay=profile.weight_decay
    )

    total = epochs if epochs is not None else profile.epochs["detection"]
    peak_lr = profile.learning_rate * 10

    def train_epoch(epoch: int) -> float:
        return _train_one_epoch(detector, train, optimiser, profile, seed, epoch, on_step, total, peak_lr)

    def validate() -> float:
        return detection_score(detection_metrics(detector, val))

    state = run_epochs(detector, optimiser, None, work_dir, total, train_epoch, validate, on_epoch)
    return detector.eval(), state.best_score, state.best_epoch, state.history


WARMUP_FRACTION = 0.05  # of all steps, with the learning rate rising linearly from zero
FINAL_LR_FRACTION = 0.02


def scheduled_lr(peak: float, progress: float) -> float:
    """Linear warm-up, then cosine decay to FINAL_LR_FRACTION of the peak; ``progress`` in [0, 1].

    A from-scratch detector fitted in a handful of epochs ends far better settled on a decay
    that is fixed in advance than on plateau halving, which its saturated phantom validation
    score triggers at random.
    """
    if progress < WARMUP_FRACTION:
        return peak * max(progress / WARMUP_FRACTION, 0.01)
    cosine = 0.5 * (1.0 + np.cos(np.pi * min((progress - WARMUP_FRACTION) / (1.0 - WARMUP_FRACTION), 1.0)))
    return peak * (FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * cosine)


def _train_one_epoch(
    detector,
    data: DetectionSet,
    optimiser,
    profile: Profile,
    seed: int,
    epoch: int,
    on_step,
    total_epochs: int,
    peak_lr: float,
) -> float:
    detector.model.train()
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(len(data))
    losses = []
    steps = max(1, int(np.ceil(len(order) / profile.detector_batch_size)))
    for step, start in enumerate(range(0, len(order), profile.detector_batch_size)):
        for group in optimiser.param_groups:
            group["lr"] = scheduled_lr(peak_lr, (epoch + step / steps) / total_epochs)
        index = order[start : start + profile.detector_batch_size]
        if len(index) < 2:
            continue
        images, targets = [], []
        for i in index:
            image, boxes, labels = augment_detection(
                data.sources[i], data.source_boxes[i], detector.input_size, rng, data.source_labels[i]
            )
            images.append(image)
            targets.append({"boxes": boxes, "labels": labels})
        device = next(detector.parameters()).device
        images = [image.to(device) for image in images]
        targets = [{key: value.to(device) for key, value in target.items()} for target in targets]
        optimiser.zero_grad(set_to_none=True)
        loss_parts = detector.model(images, targets)
        loss = loss_parts["bbox_regression"] + loss_parts["classification"]
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if on_step:
            on_step({"loss": float(np.mean(losses[-20:]))})
    return float(np.mean(losses)) if losses else float("nan")
