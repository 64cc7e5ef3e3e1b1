"""The one input normalisation: grey levels by rank, identical for any tone curve."""

import numpy as np
import pytest
import torch

from avn.intensity import detector_contrast, equalise, standardised_ranks
from avn.models.detector import prepare_detector_input
from avn.pipeline.crop import normalise


def test_equalise_ignores_any_increasing_tone_curve():
    image = np.random.default_rng(0).random((120, 90)).astype(np.float32)
    for curve in (
        lambda x: x**3,
        lambda x: np.log1p(50 * x),
        lambda x: 0.2 + 0.05 * x,
        lambda x: 1 / (1 + np.exp(-8 * (x - 0.5))),
    ):
        # equal up to ties that float32 rounding of the curve creates between near-equal pixels
        assert np.abs(equalise(image) - equalise(curve(image).astype(np.float32))).max() < 1e-3


def test_equalise_is_not_blind_to_order():
    image = np.random.default_rng(1).random((50, 50)).astype(np.float32)
    assert not np.allclose(equalise(image), equalise(1.0 - image))  # inversion is a real change


def test_equalised_values_are_mid_ranks_in_the_open_unit_interval():
    image = np.array([[0.0, 0.5], [0.5, 1.0]], np.float32)
    assert equalise(image).tolist() == [[0.125, 0.5], [0.5, 0.875]]
    assert np.all(equalise(np.full((7, 5), 3.0, np.float32)) == 0.5)  # flat: the middle everywhere
    assert equalise(np.zeros((0, 4), np.float32)).shape == (0, 4)


def test_standardised_ranks_have_zero_mean_and_unit_variance():
    out = standardised_ranks(np.random.default_rng(2).normal(size=(64, 64)).astype(np.float32))
    assert out.mean() == pytest.approx(0.0, abs=1e-4) and out.std() == pytest.approx(1.0, abs=1e-3)


def test_crop_normalisation_and_detector_input_share_the_rank_normalisation():
    crop = np.random.default_rng(3).random((32, 32)).astype(np.float32)
    assert np.allclose(normalise(crop), normalise(np.sqrt(crop)))
    radiograph = np.random.default_rng(4).random((600, 400)).astype(np.float32)
    a, _ = prepare_detector_input(radiograph, 320)
    b, _ = prepare_detector_input(radiograph * 0.1 + 0.3, 320)  # another window, same order
    assert torch.allclose(a, b, atol=1e-3)
    # the letterbox padding stays black, the content spans the range
    assert a[0, :, 214:].max() == 0.0 and a[0, :, :213].min() < 0.01 and a.max() > 0.99


def test_local_contrast_restores_a_region_that_global_ranks_leave_faint():
    """Half the image is flat background: global ranks squeeze the anatomy into the other half of
    the grey scale; the local step spreads it again, whatever the tone curve."""
    rng = np.random.default_rng(5)
    image = np.zeros((200, 200), np.float32)
    image[:, 100:] = 0.5 + 0.01 * rng.random((200, 100), dtype=np.float32)  # the "anatomy"
    image[:, :100] += 0.001 * rng.random((200, 100), dtype=np.float32)  # near-flat background
    anatomy_global = equalise(image)[:, 120:180]
    anatomy_local = detector_contrast(image)[:, 120:180]
    assert np.ptp(anatomy_local) > np.ptp(anatomy_global) * 1.2 or anatomy_local.std() > anatomy_global.std() * 1.2
    assert np.abs(detector_contrast(image) - detector_contrast(np.sqrt(image))).max() < 0.01
