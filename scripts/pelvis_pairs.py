"""How often the served detector finds a plausible pair of femoral heads on unannotated AP pelves.

The real check set (``tests/data/real``) is small because every file needs hand-drawn boxes and a
licence that lets it live in the repository. Many more real AP pelvic radiographs can be read
locally without boxes (e.g. the rest of PXR150, MIT, see docs/real-data.md). On an AP pelvis with
two native hips the detector should report one head per image half, of about the same size and
height, and of a size a femoral head has on a pelvis. This script counts, per folder:

* ``pair``: two heads (one per half) reported; ``plausible``: a pair that also satisfies the
  anatomy (sizes within 0.75–1.33 of each other, centres within 0.6 head of the same height,
  mean head 7–20% of the image width);
* ``one`` and ``none``: fewer heads reported.

It is a lower bound on what is right (a radiograph with a prosthesis has only one native head, so
``one`` is its right answer) and not an IoU measure: look at the heads it writes with ``--json``.

    python scripts/pelvis_pairs.py --store model_store FOLDER [--exclude NAME ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from avn.dataset.images import read_radiograph
from avn.pipeline.backend import Detections
from avn.pipeline.detect import choose_heads
from avn.serving.inprocess import load_archive

SIZE_RATIO = (0.75, 1.33)
HEIGHT_TOLERANCE = 0.6  # of the larger head
HEAD_FRACTION_OF_WIDTH = (0.07, 0.20)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


def is_plausible_pair(boxes: list[tuple[float, float, float, float]], image_width: int) -> bool:
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
    size_a, size_b = max(ax1 - ax0, ay1 - ay0), max(bx1 - bx0, by1 - by0)
    same_size = SIZE_RATIO[0] < size_a / size_b < SIZE_RATIO[1]
    same_height = abs((ay0 + ay1) / 2 - (by0 + by1) / 2) < HEIGHT_TOLERANCE * max(size_a, size_b)
    low, high = HEAD_FRACTION_OF_WIDTH
    head_sized = low * image_width < (size_a + size_b) / 2 < high * image_width
    return same_size and same_height and head_sized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--exclude", nargs="*", default=[], help="file names to leave out (e.g. the check set's)")
    parser.add_argument("--json", type=Path, help="write the heads found per file here")
    args = parser.parse_args()

    detector = load_archive(args.store / "detection.mar", "detection").module
    wanted = [p for p in args.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    files = sorted(p for p in wanted if p.name not in args.exclude)
    counts = {"files": len(files), "pair": 0, "plausible": 0, "one": 0, "none": 0}
    found = {}
    for path in files:
        pixels = read_radiograph(path).pixels
        detection = detector.detect(pixels)
        heads = choose_heads(Detections(boxes=detection.boxes, scores=detection.scores), pixels.shape[1])
        found[path.name] = [{"box": [round(v, 1) for v in head.box], "score": round(head.score, 3)} for head in heads]
        if len(heads) == 2:
            counts["pair"] += 1
            counts["plausible"] += is_plausible_pair([head.box for head in heads], pixels.shape[1])
        else:
            counts["one" if heads else "none"] += 1
    print(json.dumps(counts))
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
