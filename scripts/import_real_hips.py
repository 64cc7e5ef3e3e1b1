"""Import hand-drawn femoral-head circles on PXR150 radiographs into the real training set.

Annotations are JSON lines, one per radiograph, as the annotators wrote them:
``{"image": NAME, "heads": [{"side": "right", "circle": [cx, cy, r]}], "prostheses": [{"circle": [...]}],
"note": "..."}`` (or ``{"image": NAME, "skip": reason}``), in the source image's pixels. Each
radiograph is saved single-channel, shrunk by area averaging so that its longer side is
``--size`` pixels (the detector trains on sources of 2 × 320 px: nothing it uses is lost), as a
JPEG; its circles become boxes in the saved pixels. Every ``--every``-th radiograph (by name) is
held out as ``validation``: the detector is measured on it, never trained on it. A radiograph of the check set
(``tests/data/real``) is refused: the check stays held out.

    python scripts/import_real_hips.py --images /work/pxr/data/images annotations/*.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from avn.dataset.real import MANIFEST, REAL_TRAINING_SET, Manifest, RealFile, load_manifest

SOURCE = "github.com/atong89130/PelviXNet @ 407f444339ba466f6ecf9a74aa0b3dd51f9393ea, data/images/{name}"
LICENCE = "MIT (PelviXNet repository, Copyright (c) 2020 atong89130), covering the PXR150 images it publishes"
ATTRIBUTION = (
    "PXR150, Chang Gung Memorial Hospital; Cheng et al., Nat Commun 12:1066 (2021), "
    "doi:10.1038/s41467-021-21311-3; via atong89130/PelviXNet (MIT). Grey, shrunk to {size} px "
    "(area average), JPEG quality {quality}; femoral heads drawn for this project."
)
FINDINGS = {"normal": "no fracture", "hipfx": "hip fracture", "pelvicfx": "pelvic fracture"}


def circle_box(circle, factor: float) -> tuple[float, float, float, float]:
    cx, cy, r = (float(v) * factor for v in circle)
    return (round(cx - r, 1), round(cy - r, 1), round(cx + r, 1), round(cy + r, 1))


def check_set_images(check_set: Path) -> set[str]:
    return {entry.source.rsplit("/", 1)[-1] for entry in load_manifest(check_set).files}


def main(
    annotations: list[Path] = typer.Argument(..., help="JSON-lines files of drawn circles."),
    images: Path = typer.Option(..., help="Folder of the PXR150 PNGs (data/images of PelviXNet)."),
    out: Path = typer.Option(REAL_TRAINING_SET, help="The real training set folder."),
    check_set: Path = typer.Option(Path("tests/data/real")),
    size: int = typer.Option(640, help="Longer side of the saved radiographs."),
    quality: int = typer.Option(90, help="JPEG quality."),
    every: int = typer.Option(5, help="Hold out every n-th radiograph for validation."),
) -> None:
    held_out = check_set_images(check_set)
    out.mkdir(parents=True, exist_ok=True)
    files, skipped = [], []
    lines = [json.loads(line) for path in annotations for line in path.read_text().splitlines() if line.strip()]
    for record in sorted(lines, key=lambda r: r["image"]):
        name = record["image"]
        if name in held_out:
            raise typer.BadParameter(f"{name} is in the check set: it must not be trained on")
        if "skip" in record or not (record.get("heads") or record.get("prostheses")):
            skipped.append(name)
            continue
        grey = Image.open(images / name).convert("L")
        factor = size / max(grey.size)
        shrunk = grey.resize((round(grey.width * factor), round(grey.height * factor)), Image.Resampling.BOX)
        file = f"pxr150_{Path(name).stem}.jpg"
        shrunk.save(out / file, quality=quality)
        finding = FINDINGS.get(Path(name).stem.rsplit("-", 1)[-1], "trauma series")
        files.append(
            RealFile(
                file=file,
                kind="pelvis",
                description=f"adult AP pelvis, trauma series ({finding}); {record.get('note') or 'no remarks'}",
                heads=[{"box": circle_box(head["circle"], factor), "side": head["side"]} for head in record["heads"]],
                prostheses=[circle_box(p["circle"], factor) for p in record.get("prostheses", [])],
                source=SOURCE.format(name=name),
                licence=LICENCE,
                attribution=ATTRIBUTION.format(size=size, quality=quality),
                split="validation" if len(files) % every == every - 1 else "train",
            )
        )
    (out / MANIFEST).write_text(Manifest(files=files).model_dump_json(indent=1) + "\n")
    sizes = np.array([(out / f.file).stat().st_size for f in files])
    print(
        f"{len(files)} radiographs ({sizes.sum() / 1e6:.1f} MB, largest {sizes.max() / 1e3:.0f} kB), skipped {skipped}"
    )


if __name__ == "__main__":
    typer.run(main)
