"""Decoding through one table per image gives the pixels the image-wide steps gave, bit for bit, and
makes a single full-size float32 array; the samples' digest identifies the pixels for the cache."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from avn.dataset import images
from avn.dataset.grey_table import every_value, present, samples_digest
from avn.dataset.images import read_radiograph

REAL = Path(__file__).parent / "data" / "real"
REAL_DICOMS = sorted(REAL.glob("*.dcm"))  # RLE Lossless CR, MONOCHROME1 and MONOCHROME2, 10 and 15 bits
REAL_PNGS = sorted(REAL.glob("*.png"))[:3]


def reference_pixels(data: bytes) -> np.ndarray:
    """The decoder before the table: Modality LUT, scaling and inversion applied to the whole image."""
    ds = images._parsed_dicom(data, "x")
    header = images.dicom_image_header(ds, "x")
    values = images._modality_values(ds.pixel_array, ds, "x")
    pixels = images._normalise(values, header)
    return 1.0 - pixels if header.photometric == "MONOCHROME1" else pixels


def reference_pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        array = images._pillow_to_grey(image)
    bits = 16 if array.dtype == np.uint16 else 8
    return array.astype(np.float32) / float(2**bits - 1)


def dicom(
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    syntax=ExplicitVRLittleEndian,
    **elements,
) -> bytes:
    """A DICOM file of ``stored`` samples (uint8/uint16/int16) with extra header ``elements``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 * stored.dtype.itemsize
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(stored.dtype.kind == "i")
    ds.PixelData = stored.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def samples(dtype=np.uint16, bits: int = 12, shape=(48, 40), seed: int = 0) -> np.ndarray:
    info = np.iinfo(dtype)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if info.min < 0 else (0, 2**bits)
    return np.random.default_rng(seed).integers(low, high, shape).astype(dtype)


def modality_lut_item() -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: entries, first value mapped, bits
    item.ModalityLUTType = "OD"
    item.add_new(0x00283006, "OW", ((np.arange(4096) * 7) % 65536).astype("<u2").tobytes())  # LUT Data
    return item


SYNTHETIC = {
    "mono2-12bit": lambda: dicom(samples()),
    "mono1-12bit": lambda: dicom(samples(), "MONOCHROME1"),
    "mono1-15bit-rle": lambda: dicom(samples(bits=15), "MONOCHROME1", 15, RLELossless),
    "mono2-jpeg2000": lambda: dicom(samples(), syntax=JPEG2000Lossless),
    "mono1-jpeg2000": lambda: dicom(samples(), "MONOCHROME1", syntax=JPEG2000Lossless),
    "rescale": lambda: dicom(samples(), RescaleSlope="0.37", RescaleIntercept="-12.5"),
    "negative-slope-mono1": lambda: dicom(samples(), "MONOCHROME1", RescaleSlope="-2", RescaleIntercept="4000"),
    "signed-ct-like": lambda: dicom(samples(np.int16), bits_stored=12, RescaleSlope="1", RescaleIntercept="-1024"),
    "signed-16bit-mono1": lambda: dicom(samples(np.int16, 16), "MONOCHROME1", 16),
    "intercept-only": lambda: dicom(samples(), RescaleIntercept="-100"),
    "slope-zero": lambda: dicom(samples(), RescaleSlope="0", RescaleIntercept="5"),
    "modality-lut-sequence": lambda: dicom(samples(), ModalityLUTSequence=[modality_lut_item()]),
    "8bit-mono1": lambda: dicom(samples(np.uint8, 8), "MONOCHROME1", 8),
}


@pytest.mark.parametrize("make", SYNTHETIC.values(), ids=SYNTHETIC.keys())
def test_the_table_gives_the_image_wide_pixels_bit_for_bit(make) -> None:
    data = make()
    decoded = read_radiograph(data)
    expected = reference_pixels(data)
    assert decoded.pixels.dtype == np.float32 and decoded.pixels.shape == expected.shape
    np.testing.assert_array_equal(decoded.pixels, expected)


@pytest.mark.parametrize("path", REAL_DICOMS + REAL_PNGS, ids=lambda path: path.name)
def test_real_files_decode_as_before(path: Path) -> None:
    data = path.read_bytes()
    expected = reference_pixels(data) if path.suffix == ".dcm" else reference_pillow_pixels(data)
    np.testing.assert_array_equal(read_radiograph(data).pixels, expected)


@pytest.mark.parametrize("array", [samples(np.uint16, 16), samples(np.uint8, 8)], ids=["png16", "png8"])
def test_png_and_jpeg_decode_as_before(array: np.ndarray) -> None:
    for fmt in ("PNG", "JPEG") if array.dtype == np.uint8 else ("PNG",):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt)
        data = buffer.getvalue()
        np.testing.assert_array_equal(read_radiograph(data).pixels, reference_pillow_pixels(data))


def test_decoding_makes_one_full_size_float32_array() -> None:
    side = 1024
    data = dicom(samples(shape=(side, side), bits=15), "MONOCHROME1", 15, RescaleSlope="1", RescaleIntercept="0")
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        radiograph = read_radiograph(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    floats, samples_bytes = side * side * 4, side * side * 2
    # The float32 pixels, the integer samples, the file's pixel data as parsed, and small change;
    # the image-wide steps peaked at a float64 and two float32 arrays on top of the samples.
    assert radiograph.pixels.nbytes == floats
    assert peak < floats + 2 * samples_bytes + 1024 * 1024, peak


def test_signed_samples_index_the_table_by_their_bits() -> None:
    values = every_value(np.dtype(np.int16))
    assert values[0] == 0 and values[32767] == 32767 and values[32768] == -32768 and values[65535] == -1
    array = np.array([[-1, 0, 5, -32768]], np.int16)
    presented = present(array, lambda v: v.astype(np.float32) * 2)
    np.testing.assert_array_equal(presented.pixels, [[-2, 0, 10, -65536]])


def test_the_digest_follows_the_pixels_not_the_instance() -> None:
    stored = samples()
    first = read_radiograph(dicom(stored), digest=True)
    resent = read_radiograph(dicom(stored), digest=True)  # a new SOP Instance UID, the same pixels
    assert first.dicom.sop_instance_uid != resent.dicom.sop_instance_uid and first.digest == resent.digest
    changed = stored.copy()
    changed[3, 4] ^= 1
    others = {
        read_radiograph(data, digest=True).digest
        for data in (
            dicom(changed),  # one sample
            dicom(stored, "MONOCHROME1"),  # same samples, another table
            dicom(stored, bits_stored=13),  # same samples, another scale
            dicom(stored.reshape(40, 48)),  # same bytes, another shape
        )
    }
    assert read_radiograph(dicom(stored)).digest is None  # only when asked for
    assert first.digest not in others and len(others) == 4


def test_a_compressed_copy_of_the_same_pixels_has_the_same_digest() -> None:
    stored = samples()
    plain, rle = (
        read_radiograph(dicom(stored, syntax=syntax), digest=True) for syntax in (ExplicitVRLittleEndian, RLELossless)
    )
    np.testing.assert_array_equal(plain.pixels, rle.pixels)
    assert plain.digest == rle.digest


def test_the_real_mono1_file_is_inverted() -> None:
    data = (REAL / "wg04_rg1_chest_cr.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(np.float64) / (2**ds.BitsStored - 1)
    np.testing.assert_allclose(read_radiograph(data).pixels, 1.0 - raw, atol=1e-6)


def test_a_png_digest_covers_its_samples_and_its_scale() -> None:
    def png(array: np.ndarray, **options) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", **options)
        return buffer.getvalue()

    eight = samples(np.uint8, 8)
    first, recompressed = (read_radiograph(png(eight, compress_level=level), digest=True) for level in (1, 9))
    assert first.digest == recompressed.digest  # other bytes, same samples
    assert read_radiograph(png(eight.astype(np.uint16)), digest=True).digest != first.digest  # another scale


def test_samples_without_a_table_have_no_digest() -> None:
    wide = np.arange(12, dtype=np.uint32).reshape(3, 4)  # no table for 32-bit samples
    presented = present(wide, lambda values: values.astype(np.float32) / 11)
    assert presented.table is None and samples_digest(wide, presented.table) is None
    np.testing.assert_array_equal(presented.pixels, wide.astype(np.float32) / 11)
