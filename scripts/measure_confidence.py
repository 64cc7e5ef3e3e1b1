"""How often heads are flagged ``low_confidence``, on the phantom T-set and on real radiographs.

Runs the gateway's pipeline in-process with the models of a store over the T-set of a phantom data
set and over the real check set, and prints a Markdown table: heads answered, the share flagged
and why, and the quartiles of the two confidence measures (detector score; view/side certainty,
the maximum-softmax out-of-distribution score of avn/pipeline/confidence.py).

    python scripts/measure_confidence.py --store model_store --data data/phantom-quick
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np

from avn.dataset.format import load_dataset
from avn.dataset.real import load_manifest
from avn.evaluation.realcheck import DEFAULT_CHECK_SET
from avn.pipeline.confidence import classifier_certainty
from avn.pipeline.errors import DiagnosisError
from avn.pipeline.pipeline import Pipeline
from avn.pipeline.results import DiagnoseOptions, DiagnoseRequest, ImagePayload
from avn.serving.inprocess import InProcessBackend


async def heads_of(pipeline: Pipeline, files: list[Path]) -> list[tuple[float, float, tuple[str, ...]]]:
    """(detector score, view/side certainty, low-confidence reasons) of every head answered."""
    found = []
    for path in files:
        try:
            result = await pipeline.diagnose(DiagnoseRequest(ImagePayload(path.read_bytes()), DiagnoseOptions()))
        except DiagnosisError:
            continue
        for head in result.heads:
            view = np.array([item.probability for item in head.view_probabilities])
            side = np.array([head.side_probability, 1.0 - head.side_probability])
            found.append((head.score, classifier_certainty(view, side), head.low_confidence_reasons))
    return found


def row(name: str, heads: list[tuple[float, float, tuple[str, ...]]]) -> str:
    if not heads:
        return f"| {name} | 0 | — | — | — | — | — |"
    scores = np.array([h[0] for h in heads])
    certainty = np.array([h[1] for h in heads])
    flagged = sum(bool(h[2]) for h in heads)
    by_detector = sum(any("detector" in r for r in h[2]) for h in heads)
    by_crop = sum(any("unlike" in r for r in h[2]) for h in heads)
    q = lambda v: " / ".join(f"{x:.2f}" for x in np.percentile(v, [25, 50, 75]))  # noqa: E731
    return (
        f"| {name} | {len(heads)} | {flagged} ({flagged / len(heads):.0%}) | {by_detector} | {by_crop} "
        f"| {q(scores)} | {q(certainty)} |"
    )


async def main(store: Path, data: Path, real: Path) -> None:
    pipeline = Pipeline(InProcessBackend.from_folder(store, "cpu"))
    dataset = load_dataset(data)
    tset = [data / image.file_name for image in dataset.images_in_split("test")]
    real_files = [real / entry.file for entry in load_manifest(real).files if not entry.is_negative]
    try:
        phantom_heads = await heads_of(pipeline, tset)
        real_heads = await heads_of(pipeline, real_files)
    finally:
        await pipeline.close()
    print(
        "| radiographs | heads answered | flagged low_confidence | by detector score | by view/side certainty "
        "| detector score (quartiles) | view/side certainty (quartiles) |"
    )
    print("|---|---|---|---|---|---|---|")
    print(row(f"phantom T-set ({len(tset)})", phantom_heads))
    print(row(f"real hips and pelves ({len(real_files)})", real_heads))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--data", type=Path, default=Path("data/phantom-quick"))
    parser.add_argument("--real", type=Path, default=DEFAULT_CHECK_SET)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.store, arguments.data, arguments.real))
