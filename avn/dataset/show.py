"""Drawing one data-set radiograph with its ground truth (``avn data show``), for a human to eyeball.

The radiograph goes through ``images.read_radiograph``, the decoder training and serving use, so
what is drawn is what the models see: a box per femoral head labelled "<side> · <stage>" with its
notes, in the stage's colour, and the view and subject in the top-left corner. Palette, font, labels
and the automatic grey window are the served overlay's and the web app's (:mod:`avn.drawing`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import ValidationError

from avn.dataset.format import ANNOTATIONS_FILE, Dataset, FemoralHeadAnnotation, ImageRecord, load_dataset
from avn.dataset.images import read_radiograph
from avn.drawing import LABEL_BACKGROUND, TEXT_COLOUR, apply_window, auto_window, draw_label, load_font, stage_colour
from avn.vocabulary import VIEW_NAMES


class ShowError(ValueError):
    """The radiograph cannot be drawn; the message says why."""


class UnknownImageError(ShowError):
    """The data set has no image with the requested id."""


def render_annotated(folder: str | Path, image_id: int, out_png: str | Path, max_side: int = 1600) -> Path:
    """Draw image ``image_id`` of the data set in ``folder`` with its annotations; write an 8-bit PNG.

    The image is downsized so that its longer side is at most ``max_side`` pixels (never enlarged).
    Raises ``UnknownImageError`` for an id not in the set, ``ShowError`` for an unreadable
    annotations.json and ``images.ImageReadError`` (a ValueError too) for an unreadable image.
    """
    if max_side < 1:
        raise ShowError(f"max_side must be positive, got {max_side}")
    folder = Path(folder)
    dataset = _load(folder)
    record = _image_record(dataset, image_id)
    radiograph = read_radiograph(folder / record.file_name)
    canvas = _display_image(radiograph.pixels, max_side)
    scale = canvas.width / radiograph.width
    draw = ImageDraw.Draw(canvas)
    font = _font_for(canvas.size)
    line_width = max(2, round(max(canvas.size) / 500))
    for annotation in dataset.annotations_of(record.id):
        _draw_head(draw, canvas.size, annotation, scale, font, line_width)
    _draw_label(draw, canvas.size, _caption(record), (0, 0, 0, 0), TEXT_COLOUR, font)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png, format="PNG")
    return out_png


def _load(folder: Path) -> Dataset:
    try:
        return load_dataset(folder)
    except (OSError, json.JSONDecodeError, ValidationError) as error:
        raise ShowError(
            f"cannot read {folder / ANNOTATIONS_FILE} ({type(error).__name__}); "
            f"run `avn data check {folder}` to see what is wrong"
        ) from error


def _image_record(dataset: Dataset, image_id: int) -> ImageRecord:
    for record in dataset.images:
        if record.id == image_id:
            return record
    known = sorted(record.id for record in dataset.images)
    shown = ", ".join(map(str, known[:10])) + (", ..." if len(known) > 10 else "")
    raise UnknownImageError(f"no image with id {image_id} in the data set (ids: {shown or 'none'})")


def _display_image(pixels: np.ndarray, max_side: int) -> Image.Image:
    # The automatic window rather than the full range, so 12-bit data in a 16-bit container and
    # exposure outliers (collimator edges, markers) do not leave the anatomy grey on grey.
    image = Image.fromarray(apply_window(pixels, auto_window(pixels)), mode="L")
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image.convert("RGB")


def _font_for(size: tuple[int, int]) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # About 1/70 of the longer side: legible at 1600 px (23 px) without hiding the hip.
    return load_font(max(12, round(max(size) / 70)))


def _head_label(annotation: FemoralHeadAnnotation) -> str:
    return "\n".join([f"{annotation.side} · {annotation.stage}", *annotation.notes])


def _draw_head(
    draw: ImageDraw.ImageDraw,
    canvas_size: tuple[int, int],
    annotation: FemoralHeadAnnotation,
    scale: float,
    font,
    line_width: int,
) -> None:
    colour = stage_colour(annotation.stage)
    x0, y0, x1, y1 = (value * scale for value in annotation.xyxy)
    draw.rectangle((x0, y0, x1, y1), outline=colour, width=line_width)
    _draw_label(draw, canvas_size, _head_label(annotation), (x0, y0, x1, y1), colour, font)


def _draw_label(draw: ImageDraw.ImageDraw, canvas_size: tuple[int, int], text: str, box, colour, font) -> None:
    """Put the label above the box, or below it when the box touches the top, inside the image."""
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    width, height = right - left, bottom - top
    pad = max(2, height // 20)
    image_width, image_height = canvas_size
    x0, y0, _, y1 = box
    y = y0 - height - 3 * pad if y0 - height - 3 * pad >= 0 else y1 + pad
    y = min(max(0, y), max(0, image_height - height - 2 * pad))
    x = min(max(0, x0), max(0, image_width - width - 2 * pad))
    draw_label(draw, (x + pad - left, y + pad - top), text, font, LABEL_BACKGROUND, text_colour=colour, pad=pad)


def _caption(record: ImageRecord) -> str:
    return f"{record.view} ({VIEW_NAMES[record.view]}) · subject {record.subject_id} · image {record.id}"
