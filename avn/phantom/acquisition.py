"""The detector side of the phantom: field of view, soft tissue, exposure and image processing.

Everything here works on attenuation maps sampled on a ``Grid`` (millimetres -> working pixels):
``choose_acquisition`` draws the settings of one exposure (field, pixel spacing, bit depth,
collimation, side marker, processing), ``soft_tissue`` adds the body (outline, subcutaneous fat,
fat planes, bladder, bowel gas) and ``detect`` turns attenuation into stored pixels: log-domain
display with large-scale dynamic-range compression and edge enhancement (as CR/DX processing does),
a contrast curve, collimator shutters, the lead side marker, quantum noise whose size follows the
photon count, detector blur and quantisation to 12–16 bits. Bone is bright.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from avn.phantom.variation import NEUTRAL, Variation, apply_to_display, apply_to_output, jpeg_export

MU_SOFT = 0.020  # per mm, water-like soft tissue
MU_FAT = 0.017


@dataclass(frozen=True)
class Grid:
    """A pixel grid over the field: pixel (row i, col j) covers [x0 + j*hx, x0 + (j+1)*hx) mm."""

    x0: float
    y0: float
    hx: float
    hy: float
    shape: tuple[int, int]  # (rows, cols)

    @property
    def spacing(self) -> float:
        return 0.5 * (self.hx + self.hy)

    def window(self, xmin, ymin, xmax, ymax) -> tuple[int, int, int, int] | None:
        """Rows/cols (r0, r1, c0, c1) of the pixels touching a mm box, clipped; None if outside."""
        c0 = max(int(math.floor((xmin - self.x0) / self.hx)), 0)
        c1 = min(int(math.ceil((xmax - self.x0) / self.hx)), self.shape[1])
        r0 = max(int(math.floor((ymin - self.y0) / self.hy)), 0)
        r1 = min(int(math.ceil((ymax - self.y0) / self.hy)), self.shape[0])
        if c1 <= c0 or r1 <= r0:
            return None
        return r0, r1, c0, c1

    def coords(self, win) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (mm): xs with shape (1, w), ys with shape (h, 1)."""
        r0, r1, c0, c1 = win
        xs = (self.x0 + (np.arange(c0, c1, dtype=np.float32) + 0.5) * self.hx)[None, :]
        ys = (self.y0 + (np.arange(r0, r1, dtype=np.float32) + 0.5) * self.hy)[:, None]
        return xs, ys

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """Continuous pixel coordinates (u, v) of mm points (pixel j spans [j, j+1))."""
        pts = np.atleast_2d(pts)
        return np.column_stack([(pts[:, 0] - self.x0) / self.hx, (pts[:, 1] - self.y0) / self.hy])


# --------------------------------------------------------------------------- acquisition settings


@dataclass(frozen=True)
class Acquisition:
    spacing_mm: float  # full-size pixel spacing
    field: tuple[float, float, float, float]  # x0, y0, width, height (mm) of the detector area
    size_px: tuple[int, int]  # full-size (rows, cols)
    bits_stored: int
    soft_gain: float  # display weight of soft tissue relative to bone
    compression: float  # large-scale dynamic range compression
    edge_gain: float  # small-kernel edge enhancement
    contrast: float
    gamma: float
    level: float  # window centre shift
    noise: float  # quantum noise at reference exposure (display units)
    blur_px: float  # detector blur (sigma) at full size
    heel: float  # exposure gradient along the anode-cathode axis
    white: float  # fraction of the full range reached by the brightest bone
    exposed: tuple[float, float, float, float]  # collimated field x0, y0, x1, y1 (mm)
    blade_angle_deg: float
    shutter: str  # "unexposed" (bright) or "black" (electronic shutter)
    marker: str  # "L" or "R"
    marker_xy: tuple[float, float]  # mm, letter centre
    marker_height_mm: float


def choose_acquisition(
    view: str,
    detector: str,
    rng: np.random.Generator,
    pelvis_width: float,
    crest_height: float,
    field_focus: tuple[float, float] | None,
    keep_boxes: list[tuple[float, float, float, float]],
    marker_side: str | None,
) -> Acquisition:
    """Draw one exposure's settings.

    ``field_focus``: for a coned-down film, (x of the imaged head centre, lateral sign); None for a
    whole pelvis. ``keep_boxes``: mm boxes (x0, y0, x1, y1) the collimator must not cut (the heads).
    ``marker_side``: the patient's side the lead marker names (None: chosen here).
    """
    if field_focus is None:
        top = -(crest_height + rng.uniform(30, 70))
        bottom = rng.uniform(150, 195) if view == "AP" else rng.uniform(140, 185)
        height = bottom - top
        width = min(max(pelvis_width + rng.uniform(80, 140), 0.95 * height), 1.4 * height)
        x0 = rng.normal(0, 8) - width / 2
    else:
        hx, lat = field_focus
        top, bottom = -rng.uniform(95, 130), rng.uniform(130, 175)
        height = bottom - top
        lateral_edge = hx + lat * rng.uniform(95, 125)
        medial_edge = lat * -rng.uniform(5, 30)
        width = abs(lateral_edge - medial_edge)
        x0 = min(lateral_edge, medial_edge)
    width, height, spacing = _fit_spacing(width, height, rng)
    rows, cols = int(round(height / spacing)), int(round(width / spacing))
    field = (float(x0), float(top), cols * spacing, rows * spacing)

    exposed = _collimation(field, keep_boxes, rng)
    cr = detector == "CR"
    if marker_side is None:
        marker_side = "right" if rng.random() < 0.5 else "left"
    letter = "R" if marker_side == "right" else "L"
    mh = float(rng.uniform(10, 16))
    ex0, ey0, ex1, ey1 = exposed
    # the patient's right is on the image's left: an "R" goes to the left part of the field
    mx = ex0 + rng.uniform(12, 40) if letter == "R" else ex1 - rng.uniform(12, 40)
    my = ey0 + rng.uniform(14, 45) if rng.random() < 0.7 else ey1 - rng.uniform(14, 45)
    return Acquisition(
        spacing_mm=spacing,
        field=field,
        size_px=(rows, cols),
        bits_stored=int(rng.choice([12, 12, 14, 14, 15, 16])),
        soft_gain=float(rng.uniform(0.10, 0.16)),
        compression=float(rng.uniform(0.25, 0.45)),
        edge_gain=float(rng.uniform(0.2, 0.6)),
        contrast=float(rng.uniform(2.0, 4.0)),
        gamma=float(rng.uniform(0.85, 1.2)),
        level=float(rng.uniform(-0.08, 0.08)),
        noise=float(rng.uniform(0.006, 0.014) * (1.4 if cr else 1.0)),
        blur_px=float(rng.uniform(0.6, 1.0) * (1.3 if cr else 1.0)),
        heel=float(rng.uniform(-0.06, 0.06)),
        white=float(rng.uniform(0.8, 1.0)),
        exposed=exposed,
        blade_angle_deg=float(rng.normal(0, 0.8)),
        shutter="black" if rng.random() < 0.25 else "unexposed",
        marker=letter,
        marker_xy=(float(mx), float(my)),
        marker_height_mm=mh,
    )


def _fit_spacing(width, height, rng) -> tuple[float, float, float]:
    """A pixel spacing in [0.1, 0.2] mm giving 2000–3000 pixels along both sides."""
    lo_dim, hi_dim = min(width, height), max(width, height)
    hi_dim = min(hi_dim, 1.45 * lo_dim)
    lo_dim = max(lo_dim, hi_dim / 1.45, 205.0)
    if width < height:
        width, height = lo_dim, hi_dim
    else:
        width, height = hi_dim, lo_dim
    lo = max(0.1, hi_dim / 2990.0)
    hi = min(0.2, lo_dim / 2010.0)
    spacing = float(rng.uniform(lo, hi)) if hi > lo else lo
    return width, height, spacing


def _collimation(field, keep_boxes, rng) -> tuple[float, float, float, float]:
    """The exposed rectangle: blades sometimes inside the image, never cutting a head."""
    x0, y0, w, h = field
    x1, y1 = x0 + w, y0 + h
    kx0 = min([b[0] for b in keep_boxes], default=x1) - 12
    ky0 = min([b[1] for b in keep_boxes], default=y1) - 12
    kx1 = max([b[2] for b in keep_boxes], default=x0) + 12
    ky1 = max([b[3] for b in keep_boxes], default=y0) + 12
    edges = []
    for edge, inner_limit, sign, dim in ((x0, kx0, 1, w), (y0, ky0, 1, h), (x1, kx1, -1, w), (y1, ky1, -1, h)):
        if rng.random() < 0.55:
            m = rng.uniform(0.02, 0.1) * dim
            pos = edge + sign * m
            pos = min(pos, inner_limit) if sign > 0 else max(pos, inner_limit)
            edges.append(float(pos))
        else:
            edges.append(float(edge - sign * 20))  # blade outside the detector
    return edges[0], edges[1], edges[2], edges[3]


# --------------------------------------------------------------------------- soft tissue


def soft_tissue(
    grid: Grid,
    outline_parts: list[np.ndarray],
    half_depth: float,
    fat_mm: float,
    details: dict,
    rng: np.random.Generator,
) -> np.ndarray:
    """Soft-tissue attenuation (unitless) on ``grid``.

    The body is the union of polygons (trunk, thighs); its path length follows an elliptic profile
    from the outline inwards, with a subcutaneous fat layer of ``fat_mm``. Computed on a 4x coarser
    grid (it is smooth), then fat planes, the bladder and bowel gas are added at working resolution.
    """
    k = 4
    rows, cols = grid.shape
    coarse = Grid(grid.x0, grid.y0, grid.hx * k, grid.hy * k, ((rows + k - 1) // k, (cols + k - 1) // k))
    mask = np.zeros(coarse.shape, np.uint8)
    for poly in outline_parts:
        uv = np.round(coarse.to_px(poly) * 16 - 8).astype(np.int32)  # cv2 pixel centres, 4 fraction bits
        cv2.fillPoly(mask, [uv], 255, lineType=cv2.LINE_8, shift=4)
    # distance to the outline; the detector edge is not the body edge: pad with body
    pad = 40
    big = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    dist = cv2.distanceTransform(big, cv2.DIST_L2, 5)[pad:-pad, pad:-pad]
    # with no outline in view (the body fills the detector) the distance is "infinite": clamp it
    dist = np.minimum(dist, np.float32(1e4)) * np.float32(coarse.spacing)
    path = _elliptic_chord(dist, half_depth)
    muscle = _elliptic_chord(np.maximum(dist - fat_mm, 0), max(half_depth - fat_mm, 1.0))
    a = (MU_FAT * path + (MU_SOFT - MU_FAT) * muscle).astype(np.float32)
    a += _ellipses(coarse, details.get("bladder", []), MU_SOFT * 0.25)
    a = cv2.resize(a.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    a += _fat_planes(grid, details.get("fat_planes", []))
    a -= _bowel_gas(grid, details.get("colon", []), rng)
    return np.maximum(a, 0)


def _elliptic_chord(dist: np.ndarray, half: float) -> np.ndarray:
    d = np.minimum(dist, half)
    return 2.0 * np.sqrt(d * (2 * half - d))


def _fat_planes(grid: Grid, planes: list[np.ndarray]) -> np.ndarray:
    """Thin dark lines: intermuscular fat planes (gluteal, iliopsoas, obturator internus)."""
    img = np.zeros(grid.shape, np.float32)
    for pts in planes:
        uv = np.round(grid.to_px(pts) * 16 - 8).astype(np.int32)
        width = max(int(round(2.2 / grid.spacing)), 1)
        cv2.polylines(img, [uv], False, 1.0, thickness=width, lineType=cv2.LINE_AA, shift=4)
    img = cv2.GaussianBlur(img, (0, 0), 1.2 / grid.spacing)
    return -0.12 * img  # ~6 mm of fat instead of muscle along the plane


def _ellipses(grid: Grid, ells: list[tuple], strength: float) -> np.ndarray:
    img = np.zeros(grid.shape, np.float32)
    for cx, cy, ax, ay in ells:
        c = grid.to_px(np.array([[cx, cy]]))[0]
        cv2.ellipse(img, (int(c[0]), int(c[1])), (int(ax / grid.hx), int(ay / grid.hy)), 0, 0, 360, 1.0, -1)
    if not ells:
        return img
    img = cv2.GaussianBlur(img, (0, 0), 6.0 / grid.spacing)
    return strength * 30.0 * img


def _bowel_gas(grid: Grid, colon: list[tuple], rng: np.random.Generator) -> np.ndarray:
    """Large-bowel gas: colon segments with haustral folds, and mottled stool.

    Each segment is (control points (n, 2) mm, width mm, stool fraction). Its course is jittered,
    then drawn as a gas column whose lumen is crossed by haustral folds (thin septa every ~12-20 mm
    reaching part way across) and partly filled with faeces: a soft mass of small gas bubbles.
    """
    img = np.zeros(grid.shape, np.float32)
    if not colon:
        return img
    folds = np.zeros(grid.shape, np.float32)
    px_mm = 1.0 / grid.spacing
    for pts, width, stool in colon:
        pts = np.asarray(pts, float) + rng.normal(0.0, 5.0, (len(pts), 2))
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        n = max(int(s[-1] / 3.0), 2)
        t = np.linspace(0.0, s[-1], n)
        path = np.column_stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])])
        # the lumen's width varies (distended and collapsed parts)
        wmod = width * (0.75 + 0.25 * np.sin(t / rng.uniform(25, 45) + rng.uniform(0, 6)))
        gas_level = float(rng.uniform(0.55, 1.0))
        for i in range(n - 1):
            if rng.random() < 0.08:  # a collapsed stretch without gas
                continue
            uv = np.round(grid.to_px(path[i : i + 2]) * 16 - 8).astype(np.int32)
            cv2.polylines(
                img, [uv], False, gas_level, thickness=max(int(wmod[i] * px_mm), 1), lineType=cv2.LINE_AA, shift=4
            )
        # haustral folds across the lumen
        pos = float(rng.uniform(4, 12))
        while pos < s[-1]:
            k = min(int(pos / s[-1] * (n - 1)), n - 2)
            dvec = path[k + 1] - path[k]
            dvec /= np.linalg.norm(dvec) + 1e-6
            nrm = np.array([-dvec[1], dvec[0]])
            half = 0.5 * wmod[k] * rng.uniform(0.5, 1.0)
            side = rng.choice([-1.0, 1.0]) if rng.random() < 0.5 else 0.0
            a = path[k] + nrm * (side * 0.5 * wmod[k] - half if side else -half)
            b = path[k] + nrm * (side * 0.5 * wmod[k] + half if side else half)
            if side > 0:
                a, b = path[k] + nrm * (0.5 * wmod[k] - 2 * half), path[k] + nrm * 0.5 * wmod[k]
            elif side < 0:
                a, b = path[k] - nrm * 0.5 * wmod[k], path[k] - nrm * (0.5 * wmod[k] - 2 * half)
            uv = np.round(grid.to_px(np.array([a, b])) * 16 - 8).astype(np.int32)
            cv2.polylines(folds, [uv], False, 1.0, thickness=max(int(2.2 * px_mm), 1), lineType=cv2.LINE_AA, shift=4)
            pos += float(rng.uniform(12, 20))
        # stool: a stretch of the segment with mottled gas bubbles instead of a clear column
        if stool > 0:
            k0 = int(rng.uniform(0, 1 - stool) * (n - 1))
            k1 = min(k0 + int(stool * (n - 1)), n - 1)
            for _ in range(int(12 * (k1 - k0 + 1) / 3 + 10)):
                k = int(rng.integers(k0, k1 + 1))
                c = path[k] + rng.normal(0.0, 0.3 * wmod[k], 2)
                u, v = grid.to_px(c[None])[0]
                rad = max(int(rng.uniform(0.8, 2.8) * px_mm), 1)
                cv2.circle(img, (int(u), int(v)), rad, float(rng.uniform(0.5, 1.0)), -1, lineType=cv2.LINE_AA)
            # faeces displace the gas column in that stretch
            uv = np.round(grid.to_px(path[k0 : k1 + 1]) * 16 - 8).astype(np.int32)
            cv2.polylines(
                folds, [uv], False, 0.55, thickness=max(int(0.7 * width * px_mm), 1), lineType=cv2.LINE_AA, shift=4
            )
    img -= folds * img
    img = cv2.GaussianBlur(img, (0, 0), 0.9 / grid.spacing)
    return 0.75 * img  # ~35 mm of gas instead of tissue in a distended segment


# --------------------------------------------------------------------------- detection


def detect(
    a_bone: np.ndarray,
    a_soft: np.ndarray,
    a_metal: np.ndarray,
    grid: Grid,
    acq: Acquisition,
    out_shape: tuple[int, int],
    out_spacing: float,
    rng: np.random.Generator,
    variation: Variation = NEUTRAL,
) -> np.ndarray:
    """Attenuation maps (working grid) -> stored uint16 pixels (output grid), bone bright.

    ``variation`` (:mod:`avn.phantom.variation`) adds beam quality, scatter, a linear detector,
    extra unsharp scales, grid lines, electronic noise, burnt-in text and a JPEG export.

    Display processing, the contrast curve and the noise level are computed on the working grid;
    only the upsampling, the noise draw and the quantisation run at output size (speed).
    """
    rows, cols = grid.shape
    exposed = _exposed_mask(grid, acq)
    total = a_bone + a_soft + a_metal
    d = (
        np.float32(variation.beam_contrast) * a_bone
        + np.float32(acq.soft_gain * variation.soft_tissue_gain) * a_soft
        + np.minimum(a_metal, np.float32(3.0))
    )
    d += np.float32(acq.heel) * (np.linspace(-0.5, 0.5, rows, dtype=np.float32)[:, None])
    # CR/DX processing: compress the large-scale range (thick vs thin body) and sharpen edges
    d -= np.float32(acq.compression) * _lowpass(d, 35.0 / grid.spacing)
    d += np.float32(acq.edge_gain) * (d - _lowpass(d, 1.6 / grid.spacing, factor=2))
    d = apply_to_display(d, variation, grid.spacing, _lowpass)
    # detector blur (geometric unsharpness + scintillator/phosphor spread) on the signal
    d = cv2.GaussianBlur(d, (0, 0), max(acq.blur_px * acq.spacing_mm / grid.spacing, 0.3))

    sample = d[::3, ::3][(exposed[::3, ::3] > 0.5) & (a_metal[::3, ::3] < 0.05)]
    if sample.size < 100:
        sample = d.ravel()
    lo, hi = (float(q) for q in np.percentile(sample, [0.5, 99.7]))
    x = (d - np.float32(lo)) * np.float32(1.0 / max(hi - lo, 1e-6))
    v, slope = _curve(x, acq)
    # quantum noise: variance ~ 1/photons ~ exp(+attenuation); referenced to the body's median
    ref = float(np.median(total[::5, ::5]))
    sigma = np.exp(np.clip(np.float32(0.5) * (total - np.float32(ref)), -1.0, 0.7))
    sigma *= np.float32(acq.noise) * (np.float32(0.6) + np.float32(0.4) * slope)
    np.minimum(sigma, np.float32(3 * acq.noise), out=sigma)

    outside = _outside_level(grid, acq, rng)
    v = exposed * v + (1 - exposed) * outside
    sigma = exposed * sigma + (1 - exposed) * np.float32(0.4 * acq.noise)

    size = (out_shape[1], out_shape[0])
    img = cv2.resize(v.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    sig = cv2.resize(sigma.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    _burn_marker(img, acq, grid, out_spacing)
    # white quantum noise plus a little spatially correlated noise (screen/plate structure)
    noise = gaussian_noise(rng, out_shape)
    half = gaussian_noise(rng, ((out_shape[0] + 1) // 2, (out_shape[1] + 1) // 2))
    noise += np.float32(0.5 if acq.blur_px > 0.9 else 0.3) * cv2.resize(half, size, interpolation=cv2.INTER_LINEAR)
    noise *= sig
    img += noise
    img = apply_to_output(img, variation, rng, out_spacing)
    if variation.jpeg_quality is not None:
        img = jpeg_export(np.clip(img, 0.0, 1.0), variation.jpeg_quality)
    maxval = (1 << acq.bits_stored) - 1
    img *= np.float32(acq.white * maxval)
    np.clip(img, 0, maxval, out=img)
    return img.astype(np.uint16)


_GAUSS_LUT: np.ndarray | None = None


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Standard-normal float32 noise, fast: random bytes through a 256-level Gaussian quantile table.

    Drawing float normals is ~20x slower than random bytes; 256 quantiles are ample for image noise.
    """
    global _GAUSS_LUT
    if _GAUSS_LUT is None:
        from statistics import NormalDist

        q = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)
        _GAUSS_LUT = (q / q.std()).reshape(1, 256).astype(np.float32)
    raw = np.frombuffer(rng.bytes(shape[0] * shape[1]), np.uint8).reshape(shape)
    return cv2.LUT(raw, _GAUSS_LUT)


def _lowpass(img: np.ndarray, sigma_px: float, factor: int = 8) -> np.ndarray:
    """Wide Gaussian blur done on a ``factor`` x smaller image (fast)."""
    rows, cols = img.shape
    small = cv2.resize(img, (max(cols // factor, 1), max(rows // factor, 1)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (cols, rows), interpolation=cv2.INTER_LINEAR)


def _curve(x: np.ndarray, acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid contrast curve with gamma, normalised to [0, 1] over the window; and its slope."""
    c, m = acq.contrast, 0.5 + acq.level
    s0 = 1.0 / (1.0 + math.exp(c * m))
    s1 = 1.0 / (1.0 + math.exp(-c * (1.0 - m)))
    t = np.clip(x, -0.3, 1.3)
    t -= np.float32(m)
    t *= np.float32(-c)
    s = cv2.exp(t)
    s += np.float32(1.0)
    s = np.float32(1.0) / s
    y = np.clip((s - np.float32(s0)) * np.float32(1.0 / (s1 - s0)), 0.0, 1.0)
    # gamma through exp/log (cv2 is much faster than np.power)
    logy = cv2.log(np.maximum(y, np.float32(1e-4)))
    v = cv2.exp(logy * np.float32(acq.gamma))
    slope = s * (np.float32(1.0) - s) * np.float32(c / (s1 - s0))
    slope *= np.float32(acq.gamma) * cv2.exp(logy * np.float32(acq.gamma - 1.0))
    return v, slope


def _exposed_mask(grid: Grid, acq: Acquisition) -> np.ndarray:
    """1 inside the collimated field, 0 behind the blades, with a ~1 mm penumbra."""
    x0, y0, x1, y1 = acq.exposed
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    ang = math.radians(acq.blade_angle_deg)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) - [cx, cy]
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    corners = corners @ rot.T + [cx, cy]
    mask = np.zeros(grid.shape, np.float32)
    uv = np.round(grid.to_px(corners) * 16 - 8).astype(np.int32)
    cv2.fillPoly(mask, [uv], 1.0, lineType=cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(mask, (0, 0), max(0.6 / grid.spacing, 0.5))


def _outside_level(grid: Grid, acq: Acquisition, rng: np.random.Generator) -> np.ndarray | float:
    """What the display shows behind the blades: bright unexposed plate (with scatter) or black."""
    if acq.shutter == "black":
        return float(rng.uniform(0.0, 0.04))
    base = float(rng.uniform(0.80, 0.94))
    rows = grid.shape[0]
    ramp = np.linspace(-0.03, 0.03, rows, dtype=np.float32)[:, None]
    return base + ramp


def _burn_marker(img: np.ndarray, acq: Acquisition, grid: Grid, out_spacing: float) -> None:
    """The lead letter stops the beam: a bright letter on a faint plastic holder."""
    size_px = acq.marker_height_mm / out_spacing
    font = cv2.FONT_HERSHEY_DUPLEX
    scale = size_px / 22.0
    thick = max(int(round(size_px / 7.0)), 1)
    (tw, th), _ = cv2.getTextSize(acq.marker, font, scale, thick)
    cx = (acq.marker_xy[0] - grid.x0) / out_spacing
    cy = (acq.marker_xy[1] - grid.y0) / out_spacing
    pad = int(size_px * 0.35) + thick
    x0, y0 = int(cx - tw / 2) - pad, int(cy - th / 2) - pad
    w, h = tw + 2 * pad, th + 2 * pad
    rows, cols = img.shape
    if x0 < 0 or y0 < 0 or x0 + w > cols or y0 + h > rows:
        return
    patch = np.zeros((h, w), np.uint8)
    cv2.putText(patch, acq.marker, (pad, pad + th), font, scale, 255, thick, cv2.LINE_AA)
    letter = patch.astype(np.float32) / 255.0
    roi = img[y0 : y0 + h, x0 : x0 + w]
    roi += 0.06  # the holder
    np.maximum(roi, letter * 0.97, out=roi)
