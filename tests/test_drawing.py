"""avn.drawing: one palette, font, label and automatic window for every picture of a radiograph."""

import numpy as np
from PIL import Image, ImageDraw

import gateway.display
from avn import drawing
from avn.drawing import (
    MIN_WINDOW_WIDTH,
    STAGE_COLOURS,
    WEB_STAGE_COLOURS,
    Window,
    apply_window,
    auto_window,
    draw_label,
    load_font,
    stage_colour,
    stage_colours_module,
)
from avn.vocabulary import STAGES


def test_every_stage_has_its_own_colour_and_anything_else_is_white():
    assert tuple(STAGE_COLOURS) == STAGES
    assert len(set(STAGE_COLOURS.values())) == len(STAGES)
    assert stage_colour("II") == STAGE_COLOURS["II"]
    assert stage_colour("not a stage") == drawing.TEXT_COLOUR


def test_the_web_apps_palette_is_the_generated_one():
    # Run `python -m avn.drawing` after changing STAGE_COLOURS.
    assert WEB_STAGE_COLOURS.read_text() == stage_colours_module()


def test_the_palette_module_holds_every_colour():
    text = stage_colours_module()
    for stage, (r, g, b) in STAGE_COLOURS.items():
        assert f'"{stage}": [{r}, {g}, {b}],' in text


def test_a_label_sits_on_a_background_padded_around_its_text():
    image = Image.new("RGB", (120, 60), (10, 10, 10))
    draw = ImageDraw.Draw(image)
    font = load_font(12)
    left, top, right, bottom = draw.textbbox((20, 20), "II\nIII", font=font)
    draw_label(draw, (20, 20), "II\nIII", font, (200, 0, 0), text_colour=(0, 0, 255), pad=3)
    pixels = np.asarray(image)
    assert tuple(pixels[top - 3, left - 3]) == (200, 0, 0)  # the padded corner
    assert tuple(pixels[top - 4, left - 4]) == (10, 10, 10)  # just outside it
    inside = pixels[top:bottom, left:right].reshape(-1, 3)
    assert (inside[:, 2] > inside[:, 0]).any()  # the (anti-aliased) blue text is drawn over it


def test_the_automatic_window_spans_the_middle_99_percent():
    pixels = np.linspace(0.0, 1.0, 100_001, dtype=np.float32).reshape(1, -1)
    window = auto_window(pixels)
    assert np.isclose(window.low, 0.005, atol=1e-4) and np.isclose(window.high, 0.995, atol=1e-4)
    grey = apply_window(pixels, window)
    assert grey.min() == 0 and grey.max() == 255
    flat = auto_window(np.full((8, 8), 0.3, np.float32))
    assert flat.width == MIN_WINDOW_WIDTH and np.isclose(flat.low, 0.3)


def test_apply_window_clips_rather_than_folds():
    grey = apply_window(np.array([[0.0, 0.25, 0.5, 1.0]], np.float32), Window(center=0.5, width=0.5))
    assert grey.tolist() == [[0, 0, 128, 255]]


def test_the_gateways_display_rendition_uses_the_shared_window():
    assert gateway.display.auto_window is auto_window
    assert gateway.display.apply_window is apply_window
