"""Compares the two detector backbones on the same data and the same training budget.

Trains each backbone on the same training radiographs for the same wall-clock budget (whole
epochs, resuming until the budget is spent), then prints epochs done, F1 at IoU 0.5 / 0.6 / 0.7 on
the T-set at the operating threshold chosen on validation, and inference milliseconds per
radiograph. The project's default backbone is chosen from these figures (README).

    python scripts/compare_detectors.py --data data/phantom-quick --minutes 8
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
from avn.training.detection_loop import build_detection_set, choose_score_threshold, detection_metrics, fit_detector
from avn.training.folds import subject_folds
from avn.training.profiles import QUICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per backbone")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    dataset = load_dataset(args.data)
    rows = []
    for backbone in DETECTOR_BACKBONES:
        size = DETECTOR_INPUT_SIZES[backbone]
        fold = subject_folds(dataset.splits["train"], QUICK.folds, 1, args.seed, limit=1)[0]
        everything = build_detection_set(args.data, dataset, dataset.splits["train"], size)
        train, val = everything.select_subjects(fold.train_subjects), everything.select_subjects(fold.val_subjects)
        test = build_detection_set(args.data, dataset, dataset.splits["test"], size)
        profile = replace(QUICK, detector_backbone=backbone)
        started, epochs = time.perf_counter(), 0
        with tempfile.TemporaryDirectory() as work:
            while time.perf_counter() - started < args.minutes * 60:
                epochs += 1
                detector, *_ = fit_detector(train, val, profile, Path(work), args.seed, epochs=epochs)
        threshold = choose_score_threshold(detector, val)
        detector.configure_postprocessing(top_k=detector.top_k, min_score=threshold, nms_iou=detector.nms_iou)
        metrics = detection_metrics(detector, test, score_threshold=threshold)
        per_image = inference_ms(detector, test.inputs[:10])
        rows.append((backbone, epochs, time.perf_counter() - started, metrics, per_image))
        print(rows[-1], flush=True)
    print(f"{'backbone':32} {'epochs':>6} {'train s':>8} {'F1@0.5':>7} {'F1@0.6':>7} {'F1@0.7':>7} {'ms/img':>7}")
    for backbone, epochs, seconds, metrics, per_image in rows:
        f1 = [metrics[t]["f1"] for t in ("0.5", "0.6", "0.7")]
        print(f"{backbone:32} {epochs:>6} {seconds:>8.0f} {f1[0]:>7.3f} {f1[1]:>7.3f} {f1[2]:>7.3f} {per_image:>7.1f}")


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
