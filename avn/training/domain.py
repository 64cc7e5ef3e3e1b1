"""Training-time domain randomisation: what real radiographs vary in, drawn afresh every epoch.

Two kinds, mirroring the phantom's acquisition and processing parameters (docs/phantom.md):

* :func:`randomise_photometry` — vendor processing and acquisition physics on an image in [0, 1]:
  a random monotone tone curve, large-scale dynamic-range compression and multi-scale unsharp
  masking (CR/DX "edge enhancement"), blur (focal spot, detector MTF), quantum and electronic
  noise, and an 8-bit JPEG round trip. Spatial parameters are in pixels of a reference size and
  scale with the image, so the same call serves a 320-px detector input and a 96-px head crop.
* :func:`random_clutter` — what a real pelvis is seen through, for the detector: clusters of
  bowel-gas bubbles, a smooth random field, fine texture and bright soft tissue at the sides.
* :func:`random_field_of_view` — the detector's field-of-view jitter: a window that zooms in or
  out so that femoral heads span about 15 to 120 px of the detector input, off-centre, sometimes
  past the image edge (padded like a collimator shutter), sometimes holding no head at all (the
  detector must learn that a field without a femoral head has none).

The input normalisation (:mod:`avn.intensity`) already makes the models blind to global tone
curves; the tone curve is kept because noise and JPEG act after it, as in a real chain.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avn.phantom.variation import jpeg_export

REFERENCE_SIZE = 320.0  # pixels of the image the spatial parameters below are given for
# The detector-input parameters above mimic how a whole radiograph looks at 320 px (~1.1 mm a
# pixel), softened by the shrink as much as by the detector. A head crop is read at ~0.5 mm a
# pixel (96 px) or finer; its blur and noise grain must stay physical (blur up to ~0.6 mm), or the
# subtle findings of stages II and III are blurred away: a crop of S pixels takes
# S / CROP_PIXELS_PER_UNIT reference pixels per pixel (0.5 at 96 px).
CROP_PIXELS_PER_UNIT = 192.0

TONE_PROBABILITY = 0.8
COMPRESSION_PROBABILITY = 0.5
COMPRESSION_RANGE = (0.2, 0.7)  # fraction of the large-scale signal removed
COMPRESSION_SIGMA_PX = (15.0, 60.0)
UNSHARP_PROBABILITY = 0.6
UNSHARP_SIGMA_PX = (0.8, 8.0)
UNSHARP_GAIN = (0.2, 1.5)
BLUR_PROBABILITY = 0.6
BLUR_SIGMA_PX = (0.3, 2.5)
NOISE_PROBABILITY = 0.7
NOISE_SIGMA = (0.003, 0.04)  # of the full range, at mid-grey
JPEG_PROBABILITY = 0.35
JPEG_QUALITY = (20, 95)


def randomise_photometry(image: np.ndarray, rng: np.random.Generator, unit: float | None = None) -> np.ndarray:
    """One random processing chain applied to a grey image in [0, 1]; float32 in [0, 1].

    ``unit``: image pixels per reference pixel (default: the image's longer side / REFERENCE_SIZE,
    right for a whole radiograph; a head crop, whose pixels are finer, passes its own).
    """
    out = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    unit = max(out.shape) / REFERENCE_SIZE if unit is None else unit
    if rng.random() < TONE_PROBABILITY:
        out = random_tone_curve(out, rng)
    if rng.random() < COMPRESSION_PROBABILITY:
        sigma = rng.uniform(*COMPRESSION_SIGMA_PX) * unit
        out = _rescaled(out - rng.uniform(*COMPRESSION_RANGE) * cv2.GaussianBlur(out, (0, 0), sigma))
    if rng.random() < UNSHARP_PROBABILITY:
        for _ in range(int(rng.integers(1, 3))):  # one or two scales, as multi-scale processing does
            sigma = float(np.exp(rng.uniform(*np.log(UNSHARP_SIGMA_PX)))) * unit
            out = out + rng.uniform(*UNSHARP_GAIN) * (out - cv2.GaussianBlur(out, (0, 0), sigma))
        out = np.clip(out, 0.0, 1.0)
    if rng.random() < BLUR_PROBABILITY:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(*BLUR_SIGMA_PX) * unit)
    if rng.random() < NOISE_PROBABILITY:
        out = add_noise(out, rng.uniform(*NOISE_SIGMA), rng)
    if rng.random() < JPEG_PROBABILITY:
        out = jpeg_export(out, int(rng.integers(*JPEG_QUALITY)))
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def random_tone_curve(image: np.ndarray, rng: np.random.Generator, knots: int = 6) -> np.ndarray:
    """A random strictly increasing curve through (0, 0) and (1, 1): window, gamma, S-curve, log."""
    steps = rng.gamma(2.0, 1.0, knots)
    ys = np.concatenate([[0.0], np.cumsum(steps) / steps.sum()])
    xs = np.linspace(0.0, 1.0, knots + 1)
    return np.interp(image, xs, ys).astype(np.float32)


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Quantum noise (larger where fewer photons arrive: dark, dense parts) plus electronic noise."""
    quantum = sigma * np.sqrt(np.clip(1.2 - image, 0.2, 1.2))
    electronic = 0.3 * sigma
    noise = rng.standard_normal(image.shape).astype(np.float32)
    return np.clip(image + noise * (quantum + electronic).astype(np.float32), 0.0, 1.0)


def _rescaled(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    return (image - low) / max(high - low, 1e-6)


# ---------------------------------------------------------------- anatomical clutter

# A real pelvis is seen through its contents: bowel gas and stool over the sacrum, the iliac wings
# and sometimes a head, thick soft tissue over the thighs, trabecular and overlapping-bone texture.
# The phantom draws some of it; the detector input gets more, drawn anew each epoch, so that a
# femoral head is recognised by its shape and place and not by how clean its surroundings are.
CLUTTER_PROBABILITY = 0.7
GAS_BLOBS = (0, 30)  # dark soft blobs per image, in one to three clusters
GAS_SIZE = (0.015, 0.08)  # blob radius, fraction of the image's longer side
GAS_DEPTH = (0.15, 0.6)  # how much a blob darkens (fraction of the local grey level)
FIELD_AMPLITUDE = (0.0, 0.25)  # smooth random field added (fraction of the grey range)
FIELD_SCALE = (0.05, 0.2)  # its correlation length, fraction of the longer side
TEXTURE_AMPLITUDE = (0.0, 0.03)  # band-passed texture added
TEXTURE_SCALE_PX = (0.7, 3.0)  # its grain at the reference size
VEIL_PROBABILITY = 0.5  # thick bright soft tissue at the lateral edges (thighs, flanks)
VEIL_LEVEL = (0.2, 0.7)


def random_clutter(image: np.ndarray, rng: np.random.Generator, unit: float | None = None) -> np.ndarray:
    """Gas blobs, a smooth random field, fine texture and a soft-tissue veil on an image in [0, 1]."""
    out = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if rng.random() >= CLUTTER_PROBABILITY:
        return out
    unit = max(out.shape) / REFERENCE_SIZE if unit is None else unit
    out = out * _gas_shadow(out.shape, rng)
    amplitude = rng.uniform(*FIELD_AMPLITUDE)
    out = out + amplitude * _smooth_field(out.shape, rng.uniform(*FIELD_SCALE) * max(out.shape), rng)
    amplitude = rng.uniform(*TEXTURE_AMPLITUDE)
    out = out + amplitude * _smooth_field(out.shape, rng.uniform(*TEXTURE_SCALE_PX) * unit, rng)
    if rng.random() < VEIL_PROBABILITY:
        out = _soft_tissue_veil(out, rng)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def _gas_shadow(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A multiplicative map < 1 under clusters of soft elliptical gas bubbles."""
    height, width = shape
    longer = max(shape)
    shadow = np.zeros(shape, dtype=np.float32)
    count = int(rng.integers(*GAS_BLOBS))
    if count == 0:
        return np.ones(shape, dtype=np.float32)
    centres = rng.uniform([0.15 * width, 0.0], [0.85 * width, 0.8 * height], size=(int(rng.integers(1, 4)), 2))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(count):
        cx, cy = centres[int(rng.integers(len(centres)))] + rng.normal(0, 0.12 * longer, 2)
        rx, ry = rng.uniform(*GAS_SIZE, 2) * longer
        angle = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        blob = np.clip(1.0 - (u * u + v * v), 0.0, 1.0) ** 0.5
        shadow = np.maximum(shadow, rng.uniform(*GAS_DEPTH) * blob)
    return 1.0 - shadow


def _smooth_field(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    noise = rng.standard_normal(shape).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), max(float(sigma_px), 0.5))
    return field / max(float(field.std()), 1e-6)


def _soft_tissue_veil(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brighten towards the lateral edges, as thick thighs and flanks do on a real pelvis."""
    width = image.shape[1]
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)
    start = rng.uniform(0.3, 0.8)
    ramp = np.clip((np.abs(x) - start) / (1.0 - start), 0.0, 1.0) ** rng.uniform(0.7, 2.0)
    veil = rng.uniform(*VEIL_LEVEL) * ramp[None, :]
    return image * (1.0 - veil) + veil * rng.uniform(0.6, 0.9)


# ---------------------------------------------------------------- field of view

HEAD_INPUT_PX = (15.0, 120.0)  # head sizes on the detector input the jitter aims for
WHOLE_FIELD_PROBABILITY = 0.25  # the radiograph as it is (the served geometry)
HEADLESS_PROBABILITY = 0.1  # a window holding no head: iliac wings, spine, femoral shafts
MIN_VISIBLE_FRACTION = 0.6  # a head cut by the window more than this is not a target
ASPECT_RANGE = (0.6, 1.6)  # width / height of the window


@dataclass(frozen=True)
class FieldOfView:
    """A window (x0, y0, x1, y1) of an image in its pixels; it may reach past the borders."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


def random_field_of_view(
    image_shape: tuple[int, int], boxes: np.ndarray, input_size: int, rng: np.random.Generator
) -> FieldOfView:
    """A window over an image (H, W) with head boxes (K, 4) that the detector will see at ``input_size``."""
    height, width = image_shape
    whole = FieldOfView(0.0, 0.0, float(width), float(height))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    draw = rng.random()
    if draw < WHOLE_FIELD_PROBABILITY:
        return whole
    if draw < WHOLE_FIELD_PROBABILITY + HEADLESS_PROBABILITY or len(boxes) == 0:
        return _headless_window(image_shape, boxes, rng) or whole
    head = boxes[int(rng.integers(len(boxes)))]
    head_side = max(head[2] - head[0], head[3] - head[1], 1.0)
    target = float(np.exp(rng.uniform(*np.log(HEAD_INPUT_PX))))
    longer = head_side * input_size / target  # the window's longer side
    aspect = float(np.exp(rng.uniform(*np.log(ASPECT_RANGE))))
    win_w, win_h = (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)
    # anywhere that keeps the chosen head inside, with a margin when the window allows it
    x_lo, x_hi = head[2] - win_w, head[0]
    y_lo, y_hi = head[3] - win_h, head[1]
    x0 = rng.uniform(min(x_lo, x_hi), max(x_lo, x_hi))
    y0 = rng.uniform(min(y_lo, y_hi), max(y_lo, y_hi))
    return FieldOfView(float(x0), float(y0), float(x0 + win_w), float(y0 + win_h))


def _headless_window(image_shape: tuple[int, int], boxes: np.ndarray, rng: np.random.Generator) -> FieldOfView | None:
    """A window touching no head box, or None when a few tries find none."""
    height, width = image_shape
    for _ in range(8):
        win_w = width * rng.uniform(0.3, 0.7)
        win_h = height * rng.uniform(0.3, 0.7)
        x0, y0 = rng.uniform(0, width - win_w), rng.uniform(0, height - win_h)
        window = FieldOfView(x0, y0, x0 + win_w, y0 + win_h)
        if not len(boxes) or all(_overlap_area(window, box) == 0 for box in boxes):
            return window
    return None


def _overlap_area(window: FieldOfView, box: np.ndarray) -> float:
    w = min(window.x1, box[2]) - max(window.x0, box[0])
    h = min(window.y1, box[3]) - max(window.y0, box[1])
    return max(w, 0.0) * max(h, 0.0)


def cut_field_of_view(
    image: np.ndarray, boxes: np.ndarray, window: FieldOfView, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The window's pixels (outside the image: a shutter, black or bright), the boxes left in it
    (in the window's pixels) and their indices among ``boxes`` (to carry their class labels along).

    A box cut by the window edge stays a target while at least MIN_VISIBLE_FRACTION of it is
    inside (clipped to the window); below that it is dropped, so partial heads at the border
    teach the detector nothing contradictory.
    """
    x0, y0 = int(np.floor(window.x0)), int(np.floor(window.y0))
    x1, y1 = max(int(np.ceil(window.x1)), x0 + 1), max(int(np.ceil(window.y1)), y0 + 1)
    out = _window_pixels(image, (x0, y0, x1, y1), rng)
    kept, index = [], []
    for i, box in enumerate(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)):
        area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
        clipped = np.array([max(box[0], x0), max(box[1], y0), min(box[2], x1), min(box[3], y1)], np.float32)
        inside = max(clipped[2] - clipped[0], 0) * max(clipped[3] - clipped[1], 0)
        if inside / area >= MIN_VISIBLE_FRACTION:
            kept.append(clipped - np.array([x0, y0, x0, y0], np.float32))
            index.append(i)
    return out, np.array(kept, dtype=np.float32).reshape(-1, 4), np.array(index, dtype=np.int64)


def _window_pixels(image: np.ndarray, window: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """The pixels of an integer window (x0, y0, x1, y1) of ``image``; past its borders a shutter level."""
    height, width = image.shape
    x0, y0, x1, y1 = window
    shutter = 0.0 if rng.random() < 0.6 else float(rng.uniform(0.8, 1.0))
    out = np.full((y1 - y0, x1 - x0), shutter, dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out
