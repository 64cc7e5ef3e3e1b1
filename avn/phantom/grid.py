"""A picture grid of the phantom for the docs: AP and FL rows, one column per stage, plus a row of
femoral-head close-ups so the findings can be seen.

Every column is one subject whose two hips share the column's stage at obvious severity; the
close-up crops the AP radiograph around the patient's left head (image right) at full resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from avn.phantom.render import render_radiograph
from avn.phantom.specs import HipSpec, RadiographSpec, SubjectAnatomy
from avn.vocabulary import STAGES

TILE_W = 300  # pixels per overview tile
CLOSE_W = 300
LABEL_H = 18


def _anatomy(seed: int, sex: str) -> SubjectAnatomy:
    return SubjectAnatomy(sex=sex, head_diameter_mm=48.0 if sex == "F" else 51.0, head_asymmetry_mm=0.4,
                          neck_shaft_angle_deg=130.0, acetabular_inclination_deg=39.0, joint_space_mm=4.0,
                          pelvis_width_mm=285.0 if sex == "F" else 300.0, inter_teardrop_mm=120.0,
                          shaft_cortex_mm=5.5, soft_tissue=0.35, anatomy_seed=seed)


def grid_specs(seed: int = 0) -> dict[str, dict[str, RadiographSpec]]:
    """The specs of the grid: {stage: {"AP": spec, "FL": spec}}."""
    out: dict[str, dict[str, RadiographSpec]] = {}
    for i, stage in enumerate(STAGES):
        anat = _anatomy(seed * 100 + i, "F" if i % 2 == 0 else "M")
        hips = (HipSpec("right", stage, 1.0, True, seed * 1000 + 10 * i + 1),
                HipSpec("left", stage, 1.0, True, seed * 1000 + 10 * i + 2))
        out[stage] = {view: RadiographSpec(100 * i + j, f"grid-{i}", view, anat, hips, None, "DX",
                                           seed * 7919 + 31 * i + j)
                      for j, view in enumerate(("AP", "FL"))}
    return out


def _to8(pixels: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(pixels.astype(np.float32) / ((1 << bits) - 1) * 255.0, 0, 255).astype(np.uint8)


def _tile(img8: np.ndarray, width: int) -> Image.Image:
    im = Image.fromarray(img8)
    return im.resize((width, max(int(round(im.height * width / im.width)), 1)), Image.LANCZOS)


def make_grid(out_png: Path, seed: int = 0) -> Path:
    """Render the grid and write it as a grayscale PNG (under 1 MB)."""
    out_png = Path(out_png)
    specs = grid_specs(seed)
    rows: dict[str, list[Image.Image]] = {"AP": [], "FL": [], "head": []}
    for stage in STAGES:
        ap = render_radiograph(specs[stage]["AP"], scale=1.0)
        fl = render_radiograph(specs[stage]["FL"], scale=0.35)
        rows["AP"].append(_tile(_to8(ap.pixels, ap.bits_stored), TILE_W))
        rows["FL"].append(_tile(_to8(fl.pixels, fl.bits_stored), TILE_W))
        head = next(h for h in ap.heads if h.side == "left")
        x, y, w, h = head.bbox
        half = 0.8 * max(w, h)
        cx, cy = x + w / 2, y + h / 2
        box = (int(max(cx - half, 0)), int(max(cy - half, 0)), int(min(cx + half, ap.width)),
               int(min(cy + half, ap.height)))
        crop = _to8(ap.pixels[box[1]:box[3], box[0]:box[2]], ap.bits_stored)
        tile = _tile(crop, CLOSE_W)
        draw = ImageDraw.Draw(tile)
        f = tile.width / crop.shape[1]
        draw.rectangle([(x - box[0]) * f, (y - box[1]) * f, (x + w - box[0]) * f, (y + h - box[1]) * f],
                       outline=255)
        label = ", ".join(head.notes) if head.notes else "normal head"
        draw.text((4, tile.height - 14), label[:48], fill=255, font=ImageFont.load_default())
        rows["head"].append(tile)

    row_h = {k: max(t.height for t in v) for k, v in rows.items()}
    width = TILE_W * len(STAGES)
    height = LABEL_H + sum(row_h.values()) + LABEL_H * len(rows)
    sheet = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for j, stage in enumerate(STAGES):
        draw.text((j * TILE_W + 6, 3), f"stage {stage}", fill=255, font=font)
    y = LABEL_H
    titles = {"AP": "AP", "FL": "frog-leg lateral", "head": "AP close-up, patient's left head"}
    for key in ("AP", "FL", "head"):
        draw.text((6, y + 3), titles[key], fill=200, font=font)
        y += LABEL_H
        for j, tile in enumerate(rows[key]):
            sheet.paste(tile, (j * TILE_W, y))
        y += row_h[key]
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, optimize=True)
    return out_png
