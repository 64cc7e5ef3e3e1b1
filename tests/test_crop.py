"""The one femoral-head crop: geometry (box × s), padding at borders, resample sets."""

import numpy as np
import pytest

from avn.pipeline.crop import INPUT_SIZE, crop_square, normalise, resample_scales


def coordinate_image(height=400, width=500):
    """Pixel value = its column index, so a crop reveals which columns it took."""
    return np.tile(np.arange(width, dtype=np.float32), (height, 1))


def test_crop_side_is_longer_box_side_times_scale():
    image = np.zeros((400, 400), np.float32)
    image[150:250, 150:250] = 1.0  # a 100-px bright square
    # s = 1: the crop is exactly the square, all bright.
    assert crop_square(image, (150, 150, 250, 250), scale=1.0, size=100).min() == pytest.approx(1.0)
    # s = 2: the square fills the middle half of the crop on each axis.
    crop = crop_square(image, (150, 150, 250, 250), scale=2.0, size=200)
    assert crop[100, 100] == 1.0 and crop[10, 10] == 0.0
    assert crop[:, 100].sum() == pytest.approx(100, abs=2)


def test_non_square_box_uses_its_longer_side_centred():
    crop = crop_square(coordinate_image(), (200, 100, 260, 220), scale=1.0, size=120)
    # box centre x = 230, side 120 → columns 170..290
    assert crop[60, 0] == pytest.approx(170, abs=1)
    assert crop[60, -1] == pytest.approx(289, abs=1)


def test_crop_leaving_the_image_is_padded_with_black():
    image = np.ones((100, 100), np.float32)
    crop = crop_square(image, (-20, -20, 20, 20), scale=1.0, size=40)
    assert crop[:20, :20].max() == 0.0  # outside the image
    assert crop[25:, 25:].min() == 1.0  # inside


def test_output_size_and_dtype():
    crop = crop_square(np.random.default_rng(0).random((3000, 2500), dtype=np.float32), (1000, 1200, 1350, 1550))
    assert crop.shape == (INPUT_SIZE, INPUT_SIZE) and crop.dtype == np.float32


def test_degenerate_box_is_refused():
    with pytest.raises(ValueError, match="degenerate"):
        crop_square(np.zeros((10, 10)), (5, 5, 5, 8))


def test_resample_scales_n_and_2n_for_typical():
    assert resample_scales(5).tolist() == pytest.approx([0.85, 0.9, 0.95, 1.0, 1.05])
    typical = resample_scales(5, typical=True)
    assert len(typical) == 10 and typical[0] == pytest.approx(0.85) and typical[-1] == pytest.approx(1.05)
    assert len(resample_scales(2)) == 2 and len(resample_scales(20, typical=True)) == 40


def test_normalise_gives_zero_mean_unit_variance():
    crop = np.random.default_rng(1).random((64, 64)).astype(np.float32) * 0.3 + 0.5
    out = normalise(crop)
    assert out.mean() == pytest.approx(0.0, abs=1e-5) and out.std() == pytest.approx(1.0, abs=1e-3)
    assert np.isfinite(normalise(np.zeros((8, 8), np.float32))).all()
