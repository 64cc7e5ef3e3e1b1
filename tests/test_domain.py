"""Training-time domain randomisation: processing chains and fields of view."""

import numpy as np
import pytest

from avn.training.detection_loop import WARMUP_FRACTION, DetectionSet, augment_detection, hard_radiographs, scheduled_lr
from avn.training.domain import (
    HEAD_INPUT_PX,
    MIN_VISIBLE_FRACTION,
    FieldOfView,
    cut_field_of_view,
    random_clutter,
    random_field_of_view,
    random_tone_curve,
    randomise_photometry,
    soften_heads,
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
    out, kept = cut_field_of_view(image, boxes, FieldOfView(-20, -20, 75, 75), np.random.default_rng(0))
    assert out.shape == (95, 95)
    assert np.ptp(out[:20, :]) == 0 and out[0, 0] != 1.0  # one shutter level past the border
    assert np.all(out[20:, 20:] == 1.0)  # the image itself, unchanged
    assert kept.tolist() == [[30, 30, 50, 50]]  # the second head is 9% inside (< MIN_VISIBLE_FRACTION): dropped
    assert 0.09 < MIN_VISIBLE_FRACTION < 1.0


def test_augmented_detector_inputs_keep_boxes_on_the_canvas():
    source = np.random.default_rng(0).random((640, 520)).astype(np.float16)
    boxes = np.array([[100, 300, 160, 360], [400, 300, 460, 360]], np.float32)
    rng = np.random.default_rng(1)
    for _ in range(30):
        tensor, out = augment_detection(source, boxes, 320, rng)
        assert tensor.shape == (3, 320, 320)
        assert out.shape[1] == 4 and (out >= -1e-3).all() and (out <= 320 + 1e-3).all()


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


def _ringed_head(size: int = 200, radius: float = 30.0) -> np.ndarray:
    """A grey field with a phantom-like head: a bright rim and a dark joint space around it."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    distance = np.hypot(xx - size / 2, yy - size / 2)
    image = np.full((size, size), 0.4, np.float32)
    image[distance < radius] = 0.6
    image[np.abs(distance - radius) < 2] = 0.95
    image[np.abs(distance - radius - 4) < 2] = 0.1
    image += np.random.default_rng(0).normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


def test_softening_fades_a_head_rim_keeps_grain_and_leaves_far_pixels():
    import avn.training.domain as domain

    image = _ringed_head()
    box = np.array([[70, 70, 130, 130]], np.float32)
    softened = [soften_heads(image, box, np.random.default_rng(seed)) for seed in range(20)]
    changed = [out for out in softened if not np.array_equal(out, image)]
    assert 3 < len(changed) < 20  # only some heads are softened
    rim = np.abs(np.hypot(*(np.mgrid[0:200, 0:200] - 100)) - 30) < 2
    for out in changed:
        assert out.shape == image.shape and out.dtype == np.float32
        assert out[rim].mean() < image[rim].mean() - 0.05  # the crisp rim is flattened
        assert np.array_equal(out[:, :5], image[:, :5]) or domain.SOFTEN_DECOYS[1] > 1  # far pixels (or a decoy)
        inner = out[92:108, 92:108] - np.mean(out[92:108, 92:108])
        assert inner.std() > 0.5 * (image[92:108, 92:108].std())  # the fine grain survives
    assert np.array_equal(image, _ringed_head())  # the input is not modified in place


class _Answers:
    """Stands in for a detector on three prepared radiographs: right, a spare box, a missed head."""

    top_k, min_score, nms_iou = 4, 0.3, 0.3

    def __init__(self):
        self.calls = []

    def configure_postprocessing(self, top_k, min_score, nms_iou):
        self.calls.append(min_score)
        self.top_k, self.min_score, self.nms_iou = top_k, min_score, nms_iou


def test_hard_radiographs_are_those_with_a_spare_box_or_a_missed_head(monkeypatch):
    import avn.training.detection_loop as loop

    head = np.array([[100, 100, 160, 160]], np.float32)
    answers = [
        (head.copy(), np.array([0.9])),  # right
        (np.concatenate([head, [[400, 100, 460, 160]]]), np.array([0.9, 0.6])),  # a spare box
        (np.zeros((0, 4)), np.zeros(0)),  # the head missed
        (np.array([[400, 100, 460, 160]]), np.array([0.1])),  # a headless field, a box too weak to count
    ]
    monkeypatch.setattr(loop, "detect_prepared", lambda detector, data: answers)
    truths = [head, head, head, np.zeros((0, 4), np.float32)]
    data = DetectionSet(np.zeros((4, 8, 8)), truths, truths, np.ones((4, 4)), ["a"] * 4, [], [])

    class _Model:
        def train(self):
            return self

    detector = _Answers()
    detector.model = _Model()
    assert hard_radiographs(detector, data).tolist() == [1, 2]
    assert detector.min_score == 0.3  # the operating point is restored
