"""Display renditions of a radiograph for the web app: window/level applied, 8-bit grey PNG out.

Browsers cannot decode DICOM and squash 16-bit PNG to 8 bits before a page sees it, so the web app
never decodes a radiograph itself: the gateway decodes it with the project's one decoder
(:func:`avn.pipeline.decode.decode_payload` → :func:`avn.dataset.images.read_radiograph`) and sends
back this rendition. Window centre and width are fractions of the decoder's presentation range
[0, 1] (bone bright, MONOCHROME1 already inverted), so one pair of sliders means the same for a
12-bit CR, a 16-bit DX and an 8-bit JPEG. Windowing happens here, on the full-precision pixels,
with the project's one automatic window (:func:`avn.drawing.auto_window`, also used by
``avn data show``); this module completes the client's window and encodes the PNG.
"""

from __future__ import annotations

import numpy as np

from avn.drawing import Window, apply_window, auto_window, encode_png

__all__ = ["Window", "apply_window", "auto_window", "chosen_window", "display_png", "windowed_png"]


def chosen_window(pixels: np.ndarray, center: float | None, width: float | None) -> Window:
    """The client's window, with the automatic window's value for whichever part it left out."""
    if center is not None and width is not None:
        return Window(center, width)
    auto = auto_window(pixels)
    return Window(auto.center if center is None else center, auto.width if width is None else width)


def windowed_png(pixels: np.ndarray, center: float | None, width: float | None) -> tuple[bytes, Window]:
    """The display PNG under the client's window (completed by :func:`chosen_window`) and that window."""
    window = chosen_window(pixels, center, width)
    return display_png(pixels, window), window


def display_png(pixels: np.ndarray, window: Window) -> bytes:
    """The 8-bit grey PNG of ``pixels`` (H, W) in [0, 1] under ``window``."""
    return encode_png(apply_window(pixels, window))
