"""Domain randomisation of one radiograph: what varies between real patients, rooms and vendors.

:func:`choose_variation` draws, per radiograph (its own random stream, so the anatomy and the
ground truth do not change), the factors that ``docs/phantom.md`` tabulates with their
distributions: bone mineral density (osteopenia), beam quality, scatter that grows with the body,
raw-linear or logarithmic detector output, multi-scale unsharp masking, anti-scatter grid lines,
electronic noise, an 8-bit JPEG export, burnt-in text, and foreign bodies (surgical clips, screws,
skin markers, ECG electrodes with their leads, cables, a gonadal shield) and skin folds (likelier
with a heavier habitus). :func:`draw_foreign_bodies`
turns the foreign bodies into metal attenuation; :func:`apply_to_display` and
:func:`apply_to_output` are called by :func:`avn.phantom.acquisition.detect` at the two stages
of the image chain they belong to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

# Attenuation of a foreign body per mm of path, relative to the phantom's metal (MU_METAL).
FOREIGN_BODY_DENSITY = {
    "clip": 0.8,
    "screw": 1.0,
    "bead": 1.0,
    "electrode": 0.35,
    "lead": 0.5,
    "cable": 0.6,
    "shield": 1.0,
}
TEXT_SNIPPETS = (
    "CR",
    "DX",
    "AP",
    "PELVIS",
    "HIP",
    "L",
    "R",
    "STANDING",
    "SUPINE",
    "PORTABLE",
    "85 kV",
    "20 mAs",
    "S:200",
    "L:1.8",
    "W:2048",
    "C:1024",
    "1:1",
    "GRID",
)


@dataclass(frozen=True)
class ForeignBody:
    kind: str  # a key of FOREIGN_BODY_DENSITY
    points: tuple[tuple[float, float], ...]  # mm; a polyline, or the centre of a disc/shield
    width_mm: float  # line width, disc diameter or shield width


@dataclass(frozen=True)
class SkinFold:
    """A fold of skin and subcutaneous fat seen edge-on (pannus, flank, gluteal fold): extra soft
    tissue on one side of a curve, with a sharp edge on the curve fading over ``width_mm``."""

    points: tuple[tuple[float, float], ...]  # mm: the fold's edge, a smooth curve
    depth_mm: float  # extra soft tissue at the edge
    width_mm: float  # distance over which it fades away from the edge
    side: int  # +1 or -1: which side of the curve (by its left-hand normal) the fold lies on


@dataclass(frozen=True)
class Variation:
    bone_density: float  # cancellous bone scale: 0.55 (osteopenic) .. 1.15
    cortical_density: float  # cortical shell scale: thin, faint cortices (0.45) .. 1.1
    soft_tissue_gain: float  # how much of the soft tissue the display keeps (× the acquisition's)
    trabecular_scale_mm: float  # size of the trabecular lattice
    trabecular_contrast: float  # how strongly the lattice modulates cancellous bone
    beam_contrast: float  # bone-to-soft-tissue contrast: low kV high, high kV low
    scatter: float  # scatter-to-primary ratio of the halo
    linear_output: bool  # raw detector signal instead of the logarithmic display
    unsharp: tuple[tuple[float, float], ...]  # (sigma mm, gain) of extra unsharp-mask scales
    grid_lines: tuple[float, float, bool] | None  # (period px, amplitude, vertical) or None
    electronic_noise: float  # display units, independent of the signal
    jpeg_quality: int | None  # 8-bit JPEG export before storage, or None
    text: tuple[str, ...]  # burnt-in annotation lines
    text_corner: int  # 0..3: top-left, top-right, bottom-left, bottom-right
    foreign_bodies: tuple[ForeignBody, ...] = field(default_factory=tuple)
    skin_folds: tuple[SkinFold, ...] = field(default_factory=tuple)


NEUTRAL = Variation(1.0, 1.0, 1.0, 0.45, 0.24, 1.0, 0.0, False, (), None, 0.0, None, (), 0, ())


def choose_variation(
    rng: np.random.Generator,
    field_mm: tuple[float, float, float, float],
    habitus: float,
    heads_mm: list[tuple[float, float, float, float]],
    midline_mm: tuple[float, float],
) -> Variation:
    """Draw one radiograph's factors. ``heads_mm``: head boxes a gonadal shield must stay clear of."""
    bone = float(rng.uniform(0.55, 1.15)) if rng.random() < 0.35 else float(rng.uniform(0.9, 1.1))
    unsharp = tuple(
        (float(rng.uniform(0.8, 12.0)), float(rng.uniform(0.1, 0.8))) for _ in range(int(rng.integers(0, 3)))
    )
    grid = None
    if rng.random() < 0.3:
        grid = (float(rng.uniform(2.2, 5.0)), float(rng.uniform(0.004, 0.02)), bool(rng.random() < 0.8))
    text = ()
    if rng.random() < 0.5:
        text = tuple(
            " ".join(rng.choice(TEXT_SNIPPETS, int(rng.integers(1, 4)))) for _ in range(int(rng.integers(1, 4)))
        )
    return Variation(
        bone_density=bone,
        cortical_density=float(rng.uniform(0.45, 1.1)) if rng.random() < 0.5 else 1.0,
        soft_tissue_gain=float(np.exp(rng.uniform(np.log(0.7), np.log(2.5)))),
        trabecular_scale_mm=float(rng.uniform(0.35, 0.7)),
        trabecular_contrast=float(rng.uniform(0.12, 0.36)),
        beam_contrast=float(rng.uniform(0.75, 1.25)),
        scatter=float(rng.uniform(0.05, 0.25) + 0.35 * habitus) if rng.random() < 0.7 else 0.0,
        linear_output=bool(rng.random() < 0.15),
        unsharp=unsharp,
        grid_lines=grid,
        electronic_noise=float(rng.uniform(0.0, 0.01)),
        jpeg_quality=int(rng.integers(30, 95)) if rng.random() < 0.15 else None,
        text=text,
        text_corner=int(rng.integers(0, 4)),
        foreign_bodies=_foreign_bodies(rng, field_mm, heads_mm, midline_mm),
        skin_folds=_skin_folds(rng, field_mm, habitus),  # drawn last: the other factors keep their draws
    )


def _foreign_bodies(rng, field_mm, heads_mm, midline_mm) -> tuple[ForeignBody, ...]:
    x0, y0, w, h = field_mm
    bodies: list[ForeignBody] = []

    def anywhere() -> np.ndarray:
        return np.array([rng.uniform(x0 + 0.1 * w, x0 + 0.9 * w), rng.uniform(y0 + 0.1 * h, y0 + 0.9 * h)])

    if rng.random() < 0.12:  # surgical clips: a small cluster
        centre = anywhere()
        for _ in range(int(rng.integers(2, 8))):
            c = centre + rng.normal(0, 15, 2)
            angle, length = rng.uniform(0, math.pi), rng.uniform(5, 10)
            d = np.array([math.cos(angle), math.sin(angle)]) * length / 2
            bodies.append(ForeignBody("clip", (tuple(c - d), tuple(c + d)), float(rng.uniform(0.8, 1.4))))
    if rng.random() < 0.08:  # screws (fixation, cup screws)
        for _ in range(int(rng.integers(1, 4))):
            c, angle = anywhere(), rng.uniform(0, math.pi)
            d = np.array([math.cos(angle), math.sin(angle)]) * rng.uniform(25, 45) / 2
            bodies.append(ForeignBody("screw", (tuple(c - d), tuple(c + d)), float(rng.uniform(4.0, 6.5))))
    if rng.random() < 0.15:  # skin markers and beads
        for _ in range(int(rng.integers(1, 4))):
            bodies.append(ForeignBody("bead", (tuple(anywhere()),), float(rng.uniform(1.5, 5.0))))
    if rng.random() < 0.15:  # ECG electrodes and their leads
        for _ in range(int(rng.integers(1, 4))):
            electrode = anywhere()
            bodies.append(ForeignBody("electrode", (tuple(electrode),), float(rng.uniform(9.0, 14.0))))
            bodies.append(ForeignBody("lead", _wire(rng, electrode, field_mm), float(rng.uniform(1.0, 2.0))))
    if rng.random() < 0.1:  # cables and tubes across the field
        for _ in range(int(rng.integers(1, 3))):
            bodies.append(ForeignBody("cable", _wire(rng, anywhere(), field_mm), float(rng.uniform(1.5, 3.5))))
    if rng.random() < 0.08:  # a gonadal shield over the pubis, clear of both heads
        lowest = max((b[3] for b in heads_mm), default=midline_mm[1])
        centre = (midline_mm[0] + rng.normal(0, 8), lowest + rng.uniform(25, 50))
        bodies.append(ForeignBody("shield", (centre,), float(rng.uniform(55, 90))))
    return tuple(bodies)


SKIN_FOLD_PROBABILITY = (0.1, 0.5)  # thin (habitus 0) .. obese (habitus 1)


def _skin_folds(rng, field_mm, habitus: float) -> tuple[SkinFold, ...]:
    """0–2 folds, likelier the heavier the patient: gently curved edges across the lower or lateral
    field (a pannus over the pubis, flank and gluteal folds), 5–25 mm of extra tissue."""
    low, high = SKIN_FOLD_PROBABILITY
    if rng.random() >= low + (high - low) * habitus:
        return ()
    x0, y0, w, h = field_mm
    folds = []
    for _ in range(int(rng.integers(1, 3))):
        start = np.array([x0 + rng.uniform(-0.1, 0.5) * w, y0 + rng.uniform(0.3, 1.0) * h])
        heading = rng.uniform(-0.6, 0.6)  # across the field, gently oblique (training also flips)
        length, bend = rng.uniform(0.4, 0.9) * w, rng.normal(0, 0.25)
        points = [start]
        for _ in range(8):
            heading += bend / 8
            points.append(points[-1] + np.array([math.cos(heading), math.sin(heading)]) * length / 8)
        folds.append(
            SkinFold(
                points=tuple(tuple(float(v) for v in p) for p in points),
                depth_mm=float(rng.uniform(5.0, 25.0)),
                width_mm=float(rng.uniform(15.0, 50.0)),
                side=1 if rng.random() < 0.5 else -1,
            )
        )
    return tuple(folds)


def skin_fold_attenuation(grid, folds: tuple[SkinFold, ...], mu: float) -> np.ndarray:
    """Extra soft-tissue attenuation of the folds on ``grid`` (``mu`` per mm of fat)."""
    out = np.zeros(grid.shape, np.float32)
    for fold in folds:
        edge = np.array(fold.points, dtype=np.float64)
        direction = np.diff(edge, axis=0)
        normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
        normal = np.vstack([normal, normal[-1:]]) * fold.side * fold.width_mm
        band = np.vstack([edge, (edge + normal)[::-1]])
        inside = np.zeros(grid.shape, np.uint8)
        cv2.fillPoly(inside, [np.round(grid.to_px(band) * 16 - 8).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        line = np.full(grid.shape, 255, np.uint8)
        cv2.polylines(line, [np.round(grid.to_px(edge) * 16 - 8).astype(np.int32)], False, 0, 1, cv2.LINE_8, shift=4)
        distance_mm = cv2.distanceTransform(line, cv2.DIST_L2, 5) * np.float32(grid.spacing)
        fade = np.clip(1.0 - distance_mm / np.float32(fold.width_mm), 0.0, 1.0)
        out += np.float32(mu * fold.depth_mm) * fade * inside
    return out


def _wire(rng, start: np.ndarray, field_mm) -> tuple[tuple[float, float], ...]:
    """A smooth random curve from ``start`` out past the field's edge."""
    step = 0.12 * max(field_mm[2], field_mm[3])  # 12 steps cross the whole field
    heading = rng.uniform(0, 2 * math.pi)
    points = [start]
    for _ in range(12):
        heading += rng.normal(0, 0.35)
        points.append(points[-1] + np.array([math.cos(heading), math.sin(heading)]) * step)
    return tuple(tuple(p) for p in points)


def draw_foreign_bodies(grid, bodies: tuple[ForeignBody, ...]) -> np.ndarray:
    """Relative metal path length (0..~1) of the foreign bodies on ``grid`` (an acquisition Grid)."""
    img = np.zeros(grid.shape, np.float32)
    px = 1.0 / grid.spacing
    for body in bodies:
        density = FOREIGN_BODY_DENSITY[body.kind]
        uv = np.round(grid.to_px(np.array(body.points)) * 16 - 8).astype(np.int32)
        thickness = max(int(round(body.width_mm * px)), 1)
        if body.kind in ("bead", "electrode"):
            layer = np.zeros(grid.shape, np.float32)
            radius = max(int(round(body.width_mm * px * 8)), 8)
            cv2.circle(layer, tuple(int(v) for v in uv[0]), radius, 1.0, -1, cv2.LINE_AA, shift=4)
            if body.kind == "electrode":  # a faint pad with a dense snap in the middle
                layer *= 0.3
                cv2.circle(layer, tuple(int(v) for v in uv[0]), max(radius // 4, 8), 1.0, -1, cv2.LINE_AA, shift=4)
            img += density * layer
        elif body.kind == "shield":
            layer = np.zeros(grid.shape, np.float32)
            c = uv[0] / 16.0
            half = body.width_mm * px / 2
            triangle = np.array([c + (-half, -0.5 * half), c + (half, -0.5 * half), c + (0, 0.9 * half)])
            cv2.fillPoly(layer, [np.round(triangle * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
            img += density * cv2.GaussianBlur(layer, (0, 0), 1.5)
        else:
            layer = np.zeros(grid.shape, np.float32)
            cv2.polylines(layer, [uv], False, 1.0, thickness, cv2.LINE_AA, shift=4)
            if body.kind == "screw":  # a denser core along the shaft
                cv2.polylines(layer, [uv], False, 0.6, max(thickness // 3, 1), cv2.LINE_AA, shift=4)
            img += density * layer
    return img


def apply_to_display(d: np.ndarray, variation: Variation, spacing_mm: float, lowpass) -> np.ndarray:
    """The display-domain signal (bone high) after scatter, detector response and unsharp masking.

    ``lowpass(image, sigma_px)`` is the acquisition's fast wide blur.
    """
    if variation.scatter > 0:
        # scatter adds a smooth veil to the transmitted intensity: bright halo, lower contrast
        transmitted = np.exp(-np.clip(d, -5.0, 20.0)).astype(np.float32)
        transmitted += np.float32(variation.scatter) * lowpass(transmitted, 25.0 / spacing_mm)
        d = -np.log(np.maximum(transmitted, 1e-6)).astype(np.float32)
    if variation.linear_output:
        # a raw (linear) detector: the display follows 1 − intensity, compressing the dense parts
        d = (1.0 - np.exp(-0.6 * (d - float(np.percentile(d[::7, ::7], 1))))).astype(np.float32)
    for sigma_mm, gain in variation.unsharp:
        d = d + np.float32(gain) * (d - lowpass(d, max(sigma_mm / spacing_mm, 0.5)))
    return d.astype(np.float32)


def apply_to_output(img: np.ndarray, variation: Variation, rng: np.random.Generator, spacing_mm: float) -> np.ndarray:
    """The output image in [0, 1] after grid lines, electronic noise and burnt-in text."""
    if variation.grid_lines is not None:
        period, amplitude, vertical = variation.grid_lines
        axis = np.arange(img.shape[1] if vertical else img.shape[0], dtype=np.float32)
        wave = np.float32(amplitude) * np.sin(axis * np.float32(2 * math.pi / period))
        img += wave[None, :] if vertical else wave[:, None]
    if variation.electronic_noise > 0:
        img += np.float32(variation.electronic_noise) * rng.standard_normal(img.shape, dtype=np.float32)
    if variation.text:
        _burn_text(img, variation.text, variation.text_corner, spacing_mm)
    return img


def _burn_text(img: np.ndarray, lines: tuple[str, ...], corner: int, spacing_mm: float) -> None:
    rows, cols = img.shape
    height_px = max(int(round(4.5 / spacing_mm)), 6)
    scale = height_px / 22.0
    thick = max(int(round(height_px / 9)), 1)
    margin = int(height_px * 0.8)
    mask = np.zeros(img.shape, np.uint8)  # cv2 draws text on 8-bit images only
    for index, line in enumerate(lines):
        (tw, th), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        x = margin if corner in (0, 2) else cols - margin - tw
        y = (
            margin + th + index * int(1.6 * th)
            if corner in (0, 1)
            else rows - margin - (len(lines) - 1 - index) * int(1.6 * th)
        )
        if x < 0 or y - th < 0 or y >= rows:
            continue
        cv2.putText(mask, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 250, thick, cv2.LINE_AA)
    np.maximum(img, mask.astype(np.float32) * np.float32(1.0 / 255.0), out=img)


def jpeg_export(img: np.ndarray, quality: int) -> np.ndarray:
    """An image in [0, 1] as it comes back from an 8-bit JPEG export."""
    eight = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", eight, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a grey uint8 image
        return img
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
