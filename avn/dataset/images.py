"""Reading radiographs from DICOM or PNG/JPEG into one presentation: float32 in [0, 1], bone bright.

One decoder for the data-set checker, training, serving and evaluation. DICOM goes through pydicom
(pylibjpeg plug-ins decode compressed transfer syntaxes); the Modality LUT is applied and
MONOCHROME1 is inverted so that bone is always bright, whatever the modality wrote.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DICOM_SUFFIXES = (".dcm", ".dicom")
PNG_SUFFIXES = (".png",)
JPEG_SUFFIXES = (".jpg", ".jpeg")
IMAGE_SUFFIXES = DICOM_SUFFIXES + PNG_SUFFIXES + JPEG_SUFFIXES

# Largest radiograph we accept; real detectors stay well under this (a 43 cm plate at 0.1 mm).
MAX_PIXELS = 8000 * 8000


class ImageReadError(ValueError):
    """An image file or payload that cannot be read as a radiograph; the message says why."""


@dataclass(frozen=True)
class Radiograph:
    """Decoded pixels (H, W) float32 in [0, 1], bone bright, with what the file told about them."""

    pixels: np.ndarray
    bits_stored: int
    pixel_spacing: tuple[float, float] | None
    source_format: str  # "dicom", "png" or "jpeg"
    photometric: str = "MONOCHROME2"
    body_part: str | None = None  # DICOM BodyPartExamined, upper case; None when the file does not say

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def is_dicom_bytes(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_radiograph(source: str | Path | bytes) -> Radiograph:
    """Decode a radiograph from a path or raw bytes (DICOM recognised by its preamble or suffix)."""
    data, name = _bytes_and_name(source)
    if not data:
        raise ImageReadError(f"{name}: empty file")
    if is_dicom_bytes(data) or name.lower().endswith(DICOM_SUFFIXES):
        return _read_dicom(data, name)
    return _read_pillow(data, name)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, reading headers only where the format allows."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        except Exception as error:  # pydicom raises many types for broken files
            raise ImageReadError(f"{path.name}: not a readable DICOM file ({error})") from error
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:
        raise ImageReadError(f"{path.name}: not a readable image ({error})") from error


def _bytes_and_name(source: str | Path | bytes) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<payload>"
    path = Path(source)
    try:
        return path.read_bytes(), path.name
    except OSError as error:
        raise ImageReadError(f"{path.name}: cannot be read ({error.strerror or error})") from error


def _read_pillow(data: bytes, name: str) -> Radiograph:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            source_format = "jpeg" if image.format == "JPEG" else "png"
            array = _pillow_to_grey(image)
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{name}: image too large ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{name}: not a readable PNG or JPEG image ({error})") from error
    bits = 16 if array.dtype == np.uint16 else 8
    pixels = array.astype(np.float32) / float(2**bits - 1)
    return Radiograph(pixels=pixels, bits_stored=bits, pixel_spacing=None, source_format=source_format)


def _pillow_to_grey(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode == "I":
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def _read_dicom(data: bytes, name: str) -> Radiograph:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as error:
        raise ImageReadError(f"{name}: not a readable DICOM file ({error})") from error
    if "PixelData" not in ds:
        raise ImageReadError(f"{name}: DICOM file has no pixel data")
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * columns > MAX_PIXELS:
        raise ImageReadError(f"{name}: image too large ({columns}x{rows} pixels)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageReadError(f"{name}: multi-frame DICOM is not a single radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(f"{name}: colour DICOM ({photometric}) is not a radiograph")
    try:
        raw = ds.pixel_array
    except Exception as error:
        raise ImageReadError(f"{name}: DICOM pixel data cannot be decoded ({error})") from error
    values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    bits = int(ds.get("BitsStored", 16))
    pixels = _normalise(values, bits, ds)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return Radiograph(
        pixels=pixels,
        bits_stored=bits,
        pixel_spacing=_dicom_spacing(ds),
        source_format="dicom",
        photometric=photometric,
        body_part=str(ds.get("BodyPartExamined", "") or "").strip().upper() or None,
    )


def _normalise(values: np.ndarray, bits: int, ds) -> np.ndarray:
    # Scale by the stored range rather than the image's own min/max so that a darker exposure
    # stays darker: that variation is part of what models must learn to ignore.
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    low, high = intercept, intercept + slope * (2**bits - 1)
    if slope < 0:
        low, high = high, low
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)


def _dicom_spacing(ds) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            return float(value[0]), float(value[1])
    return None
