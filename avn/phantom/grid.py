"""Picture grids of the phantom for the docs. The stage grid: AP and FL rows, one column per stage,
plus a row of femoral-head close-ups so the findings can be seen (drawn without the
domain-randomisation factors, so that only the findings differ). The variation grid: one tile
per domain-randomisation factor on the same subject.

Every column is one subject whose two hips share the column's stage at obvious severity; the
close-up crops the AP radiograph around the patient's left head (image right) at full resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from avn.phantom.render import render_radiograph
from avn.phantom.specs import HipSpec, RadiographSpec, SubjectAnatomy
from avn.phantom.variation import NEUTRAL, Variation
from avn.vocabulary import STAGES

TILE_W = 300  # pixels per overview tile
CLOSE_W = 300
LABEL_H = 18


def _anatomy(seed: int, sex: str) -> SubjectAnatomy:
    return SubjectAnatomy(
        sex=sex,
        head_diameter_mm=48.0 if sex == "F" else 51.0,
        head_asymmetry_mm=0.4,
        neck_shaft_angle_deg=130.0,
        acetabular_inclination_deg=39.0,
        joint_space_mm=4.0,
        pelvis_width_mm=285.0 if sex == "F" else 300.0,
        inter_teardrop_mm=120.0,
        shaft_cortex_mm=5.5,
        soft_tissue=0.35,
        anatomy_seed=seed,
    )


def grid_specs(seed: int = 0) -> dict[str, dict[str, RadiographSpec]]:
    """The specs of the grid: {stage: {"AP": spec, "FL": spec}}."""
    out: dict[str, dict[str, RadiographSpec]] = {}
    for i, stage in enumerate(STAGES):
        anat = _anatomy(seed * 100 + i, "F" if i % 2 == 0 else "M")
        hips = (
            HipSpec("right", stage, 1.0, True, _textbook_seed(stage, seed * 1000 + 10 * i + 1)),
            HipSpec("left", stage, 1.0, True, _textbook_seed(stage, seed * 1000 + 10 * i + 2)),
        )
        out[stage] = {
            view: RadiographSpec(100 * i + j, f"grid-{i}", view, anat, hips, None, "DX", seed * 7919 + 31 * i + j)
            for j, view in enumerate(("AP", "FL"))
        }
    return out


def _textbook_seed(stage: str, start: int) -> int:
    """``start``, or for a hip without AVN the next lesion seed that draws no osteoarthritis: the
    grid's absence column shows a normal hip (the confounder has its own tile)."""
    from avn.phantom.findings import plan_findings

    if stage != "absence":
        return start
    return next(
        s
        for s in range(start, start + 1000)
        if plan_findings(HipSpec("right", stage, 1.0, True, s)).joint_space_mm is None
    )


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
        ap = render_radiograph(specs[stage]["AP"], scale=1.0, variation=NEUTRAL)
        fl = render_radiograph(specs[stage]["FL"], scale=0.35, variation=NEUTRAL)
        rows["AP"].append(_tile(_to8(ap.pixels, ap.bits_stored), TILE_W))
        rows["FL"].append(_tile(_to8(fl.pixels, fl.bits_stored), TILE_W))
        head = next(h for h in ap.heads if h.side == "left")
        x, y, w, h = head.bbox
        half = 0.8 * max(w, h)
        cx, cy = x + w / 2, y + h / 2
        box = (
            int(max(cx - half, 0)),
            int(max(cy - half, 0)),
            int(min(cx + half, ap.width)),
            int(min(cy + half, ap.height)),
        )
        crop = _to8(ap.pixels[box[1] : box[3], box[0] : box[2]], ap.bits_stored)
        tile = _tile(crop, CLOSE_W)
        draw = ImageDraw.Draw(tile)
        f = tile.width / crop.shape[1]
        draw.rectangle([(x - box[0]) * f, (y - box[1]) * f, (x + w - box[0]) * f, (y + h - box[1]) * f], outline=255)
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


# ---------------------------------------------------------------- domain randomisation, one factor a tile

VARIATION_COLUMNS = 4


def variation_tiles(seed: int = 0) -> list[tuple[str, RadiographSpec, Variation | None]]:
    """(title, spec, variation) of each tile: one randomisation factor at a time on one subject."""
    from dataclasses import replace

    from avn.phantom.variation import ForeignBody, SkinFold

    anat = _anatomy(seed * 100 + 7, "F")
    hips = (
        HipSpec("right", "absence", 1.0, True, seed * 1000 + 71),
        HipSpec("left", "III", 1.0, True, seed * 1000 + 72),
    )
    base = RadiographSpec(900, "grid-var", "AP", anat, hips, None, "DX", seed * 7919 + 900)
    coned = replace(base, image_id=901, hips=hips[1:], missing_reason="collimated", seed=base.seed + 1)
    prosthesis = replace(base, image_id=902, hips=hips[1:], missing_reason="prosthesis", seed=base.seed + 2)
    thin = replace(base, anatomy=replace(anat, soft_tissue=0.0))
    obese = replace(base, anatomy=replace(anat, soft_tissue=1.0))
    oa_hips = (HipSpec("right", "absence", 1.0, True, _osteoarthritic_seed()), hips[1])
    metal = (
        ForeignBody("clip", ((-60.0, -40.0), (-52.0, -36.0)), 1.2),
        ForeignBody("clip", ((-40.0, -20.0), (-33.0, -28.0)), 1.2),
        ForeignBody("screw", ((40.0, -70.0), (70.0, -40.0)), 5.0),
        ForeignBody("bead", ((20.0, 60.0),), 4.0),
    )
    leads = (
        ForeignBody("electrode", ((-90.0, -120.0),), 12.0),
        ForeignBody("lead", ((-90.0, -120.0), (-40.0, -60.0), (10.0, 30.0), (40.0, 160.0)), 1.6),
        ForeignBody("cable", ((-200.0, 40.0), (-60.0, 70.0), (80.0, 40.0), (220.0, 90.0)), 2.5),
    )
    shield = (ForeignBody("shield", ((0.0, 95.0),), 80.0),)
    folds = (  # a pannus edge over the upper thighs and a flank fold
        SkinFold(((-160.0, 60.0), (-60.0, 90.0), (60.0, 95.0), (170.0, 70.0)), 20.0, 40.0, -1),
        SkinFold(((-200.0, -60.0), (-170.0, 20.0), (-150.0, 110.0)), 15.0, 30.0, 1),
    )
    n = NEUTRAL
    return [
        ("as drawn: no randomisation", base, n),
        ("thin habitus", thin, n),
        ("obese habitus: scatter halo, skin folds", obese, replace(n, scatter=0.6, skin_folds=folds)),
        ("osteopenia, fine trabeculae", base, replace(n, bone_density=0.55, trabecular_scale_mm=0.35)),
        (
            "dense bone, coarse trabeculae",
            base,
            replace(n, bone_density=1.15, trabecular_scale_mm=0.7, trabecular_contrast=0.36),
        ),
        ("high kV: low bone contrast", base, replace(n, beam_contrast=0.75)),
        ("linear (raw) detector output", base, replace(n, linear_output=True)),
        ("multi-scale unsharp masking", base, replace(n, unsharp=((1.5, 0.8), (10.0, 0.6)))),
        ("anti-scatter grid lines", base, replace(n, grid_lines=(3.0, 0.02, True))),
        ("electronic noise", base, replace(n, electronic_noise=0.02)),
        ("8-bit JPEG export, quality 30", base, replace(n, jpeg_quality=30)),
        ("burnt-in text", base, replace(n, text=("CR  PELVIS AP", "85 kV 20 mAs  S:200"), text_corner=1)),
        ("surgical clips, screw, bead", base, replace(n, foreign_bodies=metal)),
        ("ECG electrode, lead, cable", base, replace(n, foreign_bodies=leads)),
        ("gonadal shield", base, replace(n, foreign_bodies=shield)),
        ("osteoarthritis, no AVN (right)", replace(base, hips=oa_hips), n),
        ("coned to one hip", coned, n),
        ("prosthesis on the other side", prosthesis, n),
        ("all factors drawn at random", replace(base, seed=base.seed + 5), None),
        ("all factors drawn at random", replace(base, seed=base.seed + 6), None),
    ]


def _osteoarthritic_seed() -> int:
    """A lesion seed whose hip without AVN is drawn with osteoarthritis (the confounder)."""
    from avn.phantom.findings import plan_findings

    return next(
        seed for seed in range(1000) if plan_findings(HipSpec("right", "absence", 1.0, True, seed)).joint_space_mm
    )


def make_variation_grid(out_png: Path, seed: int = 0) -> Path:
    """One tile per domain-randomisation factor of docs/phantom.md, on the same subject."""
    out_png = Path(out_png)
    tiles = []
    for title, spec, variation in variation_tiles(seed):
        rendered = render_radiograph(spec, scale=0.3, variation=variation)
        tile = _tile(_to8(rendered.pixels, rendered.bits_stored), TILE_W)
        tiles.append((title, tile))
    rows = -(-len(tiles) // VARIATION_COLUMNS)
    row_h = max(tile.height for _, tile in tiles) + LABEL_H
    sheet = Image.new("L", (TILE_W * VARIATION_COLUMNS, rows * row_h), 0)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, (title, tile) in enumerate(tiles):
        x, y = (index % VARIATION_COLUMNS) * TILE_W, (index // VARIATION_COLUMNS) * row_h
        draw.text((x + 6, y + 3), title, fill=255, font=font)
        sheet.paste(tile, (x, y + LABEL_H))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, optimize=True)
    return out_png
