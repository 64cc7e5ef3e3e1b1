"""Compares the two detector backbones on the same data and the same training budget.

Trains each backbone for the same number of epochs on the same training radiographs, then prints
F1 at IoU 0.5 / 0.6 / 0.7 on the T-set, training seconds and inference milliseconds per
radiograph (detector input prepared, one radiograph at a time). The project's default backbone
is chosen from these figures (README).

    python scripts/compare_detectors.py --data data/phantom-quick --train-images 150 --epochs 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from avn.dataset.format import load_dataset
from avn.models.detector import DETECTOR_BACKBONES, DETECTOR_INPUT_SIZES
from avn.training.detection_loop import build_detection_set, detection_metrics, fit_detector
from avn.training.profiles import QUICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--train-images", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    dataset = load_dataset(args.data)
    rows = []
    for backbone in DETECTOR_BACKBONES:
        size = DETECTOR_INPUT_SIZES[backbone]
        train_all = build_detection_set(args.data, dataset, dataset.splits["train"], size)
        keep = np.random.default_rng(args.seed).permutation(len(train_all))[: args.train_images]
        subjects = sorted({train_all.subject_ids[i] for i in keep})
        train = train_all.select_subjects(subjects[: max(1, int(len(subjects) * 0.9))])
        val = train_all.select_subjects(subjects[max(1, int(len(subjects) * 0.9)) :])
        test = build_detection_set(args.data, dataset, dataset.splits["test"], size)
        profile = replace(QUICK, detector_backbone=backbone)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            detector, *_ = fit_detector(train, val, profile, Path(work), args.seed, epochs=args.epochs)
        train_seconds = time.perf_counter() - started
        metrics = detection_metrics(detector, test)
        per_image = inference_ms(detector, test.inputs[:10])
        rows.append((backbone, len(train), train_seconds, metrics, per_image))
    print(f"{'backbone':32} {'train imgs':>10} {'train s':>8} {'F1@0.5':>7} {'F1@0.6':>7} {'F1@0.7':>7} {'ms/img':>7}")
    for backbone, count, seconds, metrics, per_image in rows:
        f1 = [metrics[t]["f1"] for t in ("0.5", "0.6", "0.7")]
        print(f"{backbone:32} {count:>10} {seconds:>8.0f} {f1[0]:>7.3f} {f1[1]:>7.3f} {f1[2]:>7.3f} {per_image:>7.1f}")


@torch.no_grad()
def inference_ms(detector, inputs: np.ndarray) -> float:
    detector.eval()
    tensors = [torch.from_numpy(x.astype(np.float32))[None].expand(3, -1, -1) for x in inputs]
    detector.model([tensors[0]])  # warm-up
    started = time.perf_counter()
    for tensor in tensors:
        detector.model([tensor])
    return (time.perf_counter() - started) / len(tensors) * 1000


if __name__ == "__main__":
    main()
