"""The one radiograph decoder: PNG/JPEG/DICOM into bone-bright floats, with clear errors."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from avn.dataset.images import ImageReadError, image_size, read_radiograph


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes(rows=8, columns=6, photometric="MONOCHROME2", frames=1, samples=1, pixels=True) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixels:
        ds.PixelData = np.full(rows * columns * frames * samples, 1000, np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_8_and_16_bit_png_are_scaled_to_unit_range():
    eight = read_radiograph(png_bytes(np.array([[0, 255]], np.uint8)))
    sixteen = read_radiograph(png_bytes(np.array([[0, 65535]], np.uint16)))
    assert eight.bits_stored == 8 and sixteen.bits_stored == 16
    np.testing.assert_allclose(eight.pixels, [[0.0, 1.0]])
    np.testing.assert_allclose(sixteen.pixels, [[0.0, 1.0]])


def test_monochrome1_is_inverted_so_bone_stays_bright():
    m1 = read_radiograph(dicom_bytes(photometric="MONOCHROME1"))
    m2 = read_radiograph(dicom_bytes(photometric="MONOCHROME2"))
    np.testing.assert_allclose(m1.pixels, 1.0 - m2.pixels)
    assert m2.pixels[0, 0] == pytest.approx(1000 / 4095)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty file"),
        (b"not an image at all", "not a readable PNG or JPEG"),
        (
            png_bytes(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))[:300],
            "not a readable PNG or JPEG",
        ),
        (dicom_bytes(pixels=False), "no pixel data"),
        (dicom_bytes(frames=3), "multi-frame"),
        (dicom_bytes(photometric="RGB", samples=3), "colour DICOM"),
        (dicom_bytes()[:-20], "cannot be decoded"),
    ],
    ids=["empty", "garbage", "truncated-png", "no-pixel-data", "multi-frame", "colour", "truncated-dicom"],
)
def test_bad_payloads_raise_a_specific_error(payload, message):
    with pytest.raises(ImageReadError, match=message):
        read_radiograph(payload)


def test_absurd_dimensions_are_refused_before_decoding():
    with pytest.raises(ImageReadError, match="too large"):
        read_radiograph(_huge_header_dicom())


def _huge_header_dicom() -> bytes:
    # A header claiming 9000 x 9000 pixels with a tiny pixel payload: the guard must trip on the header.
    data = dicom_bytes(rows=4, columns=4)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows, ds.Columns = 9000, 9000
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_missing_file_and_header_only_size(tmp_path):
    with pytest.raises(ImageReadError, match="cannot be read"):
        read_radiograph(tmp_path / "nope.png")
    path = tmp_path / "a.dcm"
    path.write_bytes(dicom_bytes(rows=10, columns=7))
    assert image_size(path) == (7, 10)
    png = tmp_path / "b.png"
    png.write_bytes(png_bytes(np.zeros((5, 9), np.uint16)))
    assert image_size(png) == (9, 5)
