"""Display renditions of a radiograph for the web app: window/level applied, 8-bit grey PNG out.

Browsers cannot decode DICOM and squash 16-bit PNG to 8 bits before a page sees it, so the web app
never decodes a radiograph itself: the gateway decodes it with the project's one decoder
(:func:`avn.pipeline.decode.decode_payload` → :func:`avn.dataset.images.read_radiograph`) and sends
back this rendition. Window centre and width are fractions of the decoder's presentation range
[0, 1] (bone bright, MONOCHROME1 already inverted), so one pair of sliders means the same for a
12-bit CR, a 16-bit DX and an 8-bit JPEG. Windowing happens here, on the full-precision pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The automatic window clips this share of the darkest and brightest pixels: collimation edges and
# side markers would otherwise take most of the grey range away from bone and soft tissue.
AUTO_WINDOW_PERCENTILES = (0.5, 99.5)
AUTO_WINDOW_SAMPLE = 250_000  # pixels looked at for the percentiles; plenty for a stable estimate
MIN_WINDOW_WIDTH = 1e-3
PNG_COMPRESSION = 1  # fast; a display rendition is sent once and thrown away


@dataclass(frozen=True)
class Window:
    """Window centre and width as fractions of the presentation range [0, 1]."""

    center: float
    width: float

    @property
    def low(self) -> float:
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        return self.center + self.width / 2.0


def auto_window(pixels: np.ndarray) -> Window:
    """The window spanning the radiograph's 0.5th to 99.5th percentile (a sample of its pixels)."""
    flat = np.asarray(pixels, dtype=np.float32).reshape(-1)
    step = max(1, flat.size // AUTO_WINDOW_SAMPLE)
    low, high = np.percentile(flat[::step], AUTO_WINDOW_PERCENTILES)
    width = max(float(high - low), MIN_WINDOW_WIDTH)
    return Window(center=float(low) + width / 2.0, width=width)


def chosen_window(pixels: np.ndarray, center: float | None, width: float | None) -> Window:
    """The client's window, with the automatic window's value for whichever part it left out."""
    if center is not None and width is not None:
        return Window(center, width)
    auto = auto_window(pixels)
    return Window(auto.center if center is None else center, auto.width if width is None else width)


def apply_window(pixels: np.ndarray, window: Window) -> np.ndarray:
    """8-bit grey: the window's low edge black, its high edge white, linear in between, clipped."""
    width = max(window.width, MIN_WINDOW_WIDTH)
    scaled = (np.asarray(pixels, dtype=np.float32) - window.low) * (255.0 / width)
    # Not cv2.convertScaleAbs: it takes the absolute value, which would turn below-window pixels bright.
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def windowed_png(pixels: np.ndarray, center: float | None, width: float | None) -> tuple[bytes, Window]:
    """The display PNG under the client's window (completed by :func:`chosen_window`) and that window."""
    window = chosen_window(pixels, center, width)
    return display_png(pixels, window), window


def display_png(pixels: np.ndarray, window: Window) -> bytes:
    """The 8-bit grey PNG of ``pixels`` (H, W) in [0, 1] under ``window``."""
    ok, encoded = cv2.imencode(".png", apply_window(pixels, window), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError("PNG encoding of the display rendition failed")
    return encoded.tobytes()
