"""Training-time domain randomisation: processing chains and fields of view."""

import numpy as np
import pytest

from avn.models.detector import FH_CLASS, PROSTHESIS_CLASS
from avn.training.detection_loop import WARMUP_FRACTION, augment_detection, scheduled_lr
from avn.training.domain import (
    HEAD_INPUT_PX,
    MIN_VISIBLE_FRACTION,
    FieldOfView,
    cut_field_of_view,
    random_clutter,
    random_field_of_view,
    random_tone_curve,
    randomise_photometry,
)


def test_photometry_keeps_shape_range_and_is_reproducible():
    image = np.random.default_rng(0).random((200, 160)).astype(np.float32)
    outs = [randomise_photometry(image, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(*outs)
    for seed in range(20):
        out = randomise_photometry(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    changed = [not np.allclose(randomise_photometry(image, np.random.default_rng(s)), image) for s in range(10)]
    assert all(changed)


def test_tone_curves_are_increasing_and_fix_the_ends():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    for seed in range(10):
        y = random_tone_curve(x, np.random.default_rng(seed))
        assert y[0] == pytest.approx(0.0) and y[-1] == pytest.approx(1.0) and np.all(np.diff(y) > 0)


def test_fields_of_view_size_heads_within_the_target_range():
    boxes = np.array([[100, 300, 160, 360], [400, 300, 460, 360]], np.float32)  # 60-px heads
    sizes = []
    for seed in range(300):
        window = random_field_of_view((640, 520), boxes, 320, np.random.default_rng(seed))
        sizes.append(60 * 320 / max(window.width, window.height))  # head side on the detector input
    sizes = np.array(sizes)
    in_range = (sizes >= HEAD_INPUT_PX[0] - 1e-6) & (sizes <= HEAD_INPUT_PX[1] + 1e-6)
    assert in_range.mean() > 0.95
    assert (sizes < 25).any() and (sizes > 90).any()  # zoomed out past the image, and well in


def test_cut_keeps_visible_heads_and_drops_mostly_cut_ones():
    image = np.ones((100, 100), np.float32)
    boxes = np.array([[10, 10, 30, 30], [60, 60, 100, 100]], np.float32)
    out, kept, index = cut_field_of_view(image, boxes, FieldOfView(-20, -20, 75, 75), np.random.default_rng(0))
    assert out.shape == (95, 95)
    assert np.ptp(out[:20, :]) == 0 and out[0, 0] != 1.0  # one shutter level past the border
    assert np.all(out[20:, 20:] == 1.0)  # the image itself, unchanged
    assert kept.tolist() == [[30, 30, 50, 50]]  # the second head is 9% inside (< MIN_VISIBLE_FRACTION): dropped
    assert index.tolist() == [0]
    assert 0.09 < MIN_VISIBLE_FRACTION < 1.0


def test_augmented_detector_inputs_keep_boxes_on_the_canvas():
    source = np.random.default_rng(0).random((640, 520)).astype(np.float16)
    boxes = np.array([[100, 300, 160, 360], [400, 300, 460, 360]], np.float32)
    rng = np.random.default_rng(1)
    for _ in range(30):
        tensor, out, labels = augment_detection(source, boxes, 320, rng)
        assert tensor.shape == (3, 320, 320)
        assert out.shape[1] == 4 and (out >= -1e-3).all() and (out <= 320 + 1e-3).all()
        assert labels.tolist() == [FH_CLASS] * len(out)


def test_augmented_prostheses_keep_their_class_and_never_aim_the_field():
    source = np.random.default_rng(0).random((640, 520)).astype(np.float16)
    boxes = np.array([[100, 300, 160, 360], [400, 300, 460, 360]], np.float32)  # a head, then a metal ball
    classes = np.array([FH_CLASS, PROSTHESIS_CLASS])
    rng = np.random.default_rng(2)
    seen = {FH_CLASS: 0, PROSTHESIS_CLASS: 0}
    alone = 0
    for _ in range(60):
        _, out, labels = augment_detection(source, boxes, 320, rng, classes)
        assert len(labels) == len(out) and set(labels.tolist()) <= {FH_CLASS, PROSTHESIS_CLASS}
        for label in labels.tolist():
            seen[label] += 1
        alone += labels.tolist() == [PROSTHESIS_CLASS]
    assert seen[FH_CLASS] > 30 and seen[PROSTHESIS_CLASS] > 5  # the whole field shows both
    assert alone < 10  # zoomed fields aim at the head; a metal ball alone is only a headless field's luck


def test_clutter_is_reproducible_in_range_and_darkens_with_gas():
    image = np.full((240, 320), 0.6, np.float32)
    outs = [random_clutter(image, np.random.default_rng(3)) for _ in range(2)]
    assert np.array_equal(*outs)
    changed = 0
    for seed in range(30):
        out = random_clutter(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
        changed += not np.allclose(out, image)
    assert 10 < changed < 30  # some images keep their clean surroundings


def test_detector_learning_rate_warms_up_then_decays_smoothly():
    lrs = np.array([scheduled_lr(1e-3, p) for p in np.linspace(0, 1, 201)])
    peak = int(np.argmax(lrs))
    assert lrs[peak] == pytest.approx(1e-3, rel=0.02) and peak / 200 == pytest.approx(WARMUP_FRACTION, abs=0.01)
    assert np.all(np.diff(lrs[: peak + 1]) >= 0) and np.all(np.diff(lrs[peak:]) <= 0)
    assert lrs[-1] == pytest.approx(2e-5, rel=0.05)
