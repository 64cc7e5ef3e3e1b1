"""The output generator (SPEC §2.4): heat-map PNGs per head and the annotated overlay of the radiograph.

* :func:`cam_png` — the staging model's class activation map of one head as a small 8-bit grey PNG
  at the classifier's input size (0 = no evidence, 255 = the map's peak), covering the head's crop
  square (:func:`crop_window`).
* :func:`overlay_png` — the radiograph as an 8-bit RGB PNG of the same width and height, with the
  CAM blended over each head (jet colour map, opacity growing with the evidence so that regions
  without evidence keep the radiograph visible), the box in its stage's colour (:mod:`avn.drawing`), a
  "side · stage probability" label (with "· low confidence" on a flagged head) and the passed notes as captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from avn.drawing import LABEL_BACKGROUND, draw_label, encode_png, load_font, stage_colour
from avn.pipeline.crop import SERVING_SCALE
from avn.pipeline.results import Box, FemoralHead, View

CAM_MAX_OPACITY = 0.5


@dataclass(frozen=True)
class HeadDrawing:
    """One head to draw: its result and the raw CAM (h, w) in [0, 1], if the backend gave one."""

    head: FemoralHead
    cam: np.ndarray | None


def crop_window(box_xyxy: Sequence[float], scale: float = SERVING_SCALE) -> Box:
    """The square :func:`avn.pipeline.crop.crop_square` cuts for ``box_xyxy``, in image pixels.

    Same arithmetic as ``crop_square`` (tests pin the two together): the CAM covers exactly this
    square, so clients and the overlay can put it back where the classifiers looked.
    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    side = max(x1 - x0, y1 - y0) * scale
    left = int(round((x0 + x1) / 2.0 - side / 2.0))
    top = int(round((y0 + y1) / 2.0 - side / 2.0))
    extent = max(int(round(side)), 1)
    return Box(float(left), float(top), float(left + extent), float(top + extent))


def cam_png(cam: np.ndarray, size: int) -> bytes:
    """An 8-bit grey PNG of ``cam`` (h, w) in [0, 1], upsampled smoothly to ``size``×``size``."""
    heat = _upsample(cam, size)
    return encode_png(np.round(heat * 255).astype(np.uint8))


def overlay_png(pixels: np.ndarray, drawings: Sequence[HeadDrawing], view: View) -> bytes:
    """The radiograph (H, W) in [0, 1] as an RGB PNG with every head's findings drawn on it."""
    grey = cv2.convertScaleAbs(np.asarray(pixels, dtype=np.float32), alpha=255.0)  # rounds and saturates
    canvas = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    for drawing in drawings:
        if drawing.cam is not None:
            _blend_cam(canvas, drawing.cam, drawing.head.cam_box)
    image = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(image)
    font = load_font(_text_size(canvas.shape[0]))
    draw_label(draw, (4, 4), f"{view.view} {view.probability:.0%}", font, LABEL_BACKGROUND)
    for drawing in drawings:
        _draw_head(draw, drawing.head, font, canvas.shape[0])
    return encode_png(np.asarray(image)[:, :, ::-1])  # cv2 writes BGR


def _blend_cam(canvas: np.ndarray, cam: np.ndarray, window: Box) -> None:
    """Jet-coloured CAM over the crop square, clipped to the image; opacity ∝ evidence."""
    left, top = int(window.x0), int(window.y0)
    extent = int(window.x1 - window.x0)
    height, width = canvas.shape[:2]
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + extent, width), min(top + extent, height)
    if x1 <= x0 or y1 <= y0:
        return
    heat = _upsample(cam, extent)[y0 - top : y1 - top, x0 - left : x1 - left]
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    alpha = (CAM_MAX_OPACITY * heat)[:, :, np.newaxis]
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    canvas[y0:y1, x0:x1] = np.round(region * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)


def _draw_head(draw: ImageDraw.ImageDraw, head: FemoralHead, font: ImageFont.ImageFont, image_height: int) -> None:
    colour = stage_colour(head.stage)
    line = max(2, image_height // 400)
    x0, y0, x1, y1 = head.box.as_tuple()
    draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
    label = f"{head.side} · {head.stage} {head.stage_probability:.0%}" + (
        " · low confidence" if head.low_confidence else ""
    )
    label_height = _text_height(draw, label, font)
    draw_label(draw, (x0, max(0.0, y0 - label_height - 2 * line)), label, font, colour, text_colour=(0, 0, 0))
    caption_y = y1 + line
    for note in head.passed_notes:
        caption = f"{note.note} {note.probability:.2f}"
        draw_label(draw, (x0, caption_y), caption, font, LABEL_BACKGROUND)
        caption_y += _text_height(draw, caption, font) + line


def _text_height(draw: ImageDraw.ImageDraw, text: str, font) -> float:
    return draw.textbbox((0, 0), text, font=font)[3]


def _text_size(image_height: int) -> int:
    # Readable on a 400-px test image and on a 3000-px radiograph viewed whole.
    return max(11, image_height // 50)


def _upsample(cam: np.ndarray, size: int) -> np.ndarray:
    cam = np.asarray(cam, dtype=np.float32)
    return np.clip(cv2.resize(cam, (size, size), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def render_outputs(
    pixels: np.ndarray,
    heads: Sequence[FemoralHead],
    cams: np.ndarray | None,
    view: View,
    include_overlay: bool,
    cam_size: int,
) -> tuple[tuple[FemoralHead, ...], bytes | None]:
    """Heads with their CAM PNGs, and the overlay PNG when asked for."""
    head_cams = [None if cams is None else np.asarray(cams[index]) for index in range(len(heads))]
    heads = tuple(
        replace(head, cam_png=b"" if cam is None else cam_png(cam, cam_size))
        for head, cam in zip(heads, head_cams, strict=True)
    )
    overlay = None
    if include_overlay:
        overlay = overlay_png(
            pixels, [HeadDrawing(head, cam) for head, cam in zip(heads, head_cams, strict=True)], view
        )
    return heads, overlay
