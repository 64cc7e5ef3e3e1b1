"""Reading radiographs from DICOM or PNG/JPEG into one presentation: float32 in [0, 1], bone bright.

One decoder for the data-set checker, training, serving and evaluation. DICOM goes through pydicom
(pylibjpeg plug-ins decode compressed transfer syntaxes); the Modality LUT is applied and
MONOCHROME1 is inverted so that bone is always bright, whatever the modality wrote. A DICOM data
set without the Part 10 preamble (older archives) is read too when it starts like a DICOM element
and parses as an image. The steps from the codec's integer samples to the float pixels run once
per possible sample value, into a table (:mod:`avn.dataset.grey_table`): decoding makes one
full-size float32 array, and the samples' digest identifies the pixels for the result cache.

Nothing is decoded before its cost is known. Every decode has a budget in bytes (the decoded
samples: frames × samples × rows × columns × bytes per sample, from the header alone); over it the
decoder raises :class:`ImageTooLargeError` without touching the pixels. A Deflated DICOM data set is
inflated step by step and refused as soon as it outgrows the budget, so a small upload cannot grow
a thousandfold in memory; a PNG or JPEG is measured by its header's size and mode; a compressed
DICOM frame must be the size the header says before its codec runs. Every DICOM header field the
decoder uses is parsed and checked here, and a malformed one is an :class:`ImageReadError` naming
the field, never quoting its value (it may be patient data).
"""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from avn.dataset.grey_table import Presentation, present, samples_digest, table_of

DICOM_SUFFIXES = (".dcm", ".dicom")
PNG_SUFFIXES = (".png",)
JPEG_SUFFIXES = (".jpg", ".jpeg")
IMAGE_SUFFIXES = DICOM_SUFFIXES + PNG_SUFFIXES + JPEG_SUFFIXES

# The decode budget: 64 MiB of decoded samples holds a 16-bit 5790 × 5790 radiograph, more than any
# hip plate (43 cm at 0.1 mm is 4300 × 4300), and an 8-bit one of 8192 × 8192. The one float32
# array the decoder makes on top costs 4 bytes a pixel more.
DEFAULT_MAX_DECODE_BYTES = 64 * 1024 * 1024

# Bytes a pixel Pillow holds for an image of each mode; the rest (RGB, RGBA, LA, I, F…) take 4.
PILLOW_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
PILLOW_WIDEST_PIXEL_BYTES = 4

PART10_PREFIX_OFFSET = 128  # the preamble's length; "DICM" follows it
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
INFLATE_STEP_BYTES = 1024 * 1024
# A deflated data set holds its pixels uncompressed, plus the other elements: allow them this much.
DEFLATED_HEADER_ALLOWANCE_BYTES = 4 * 1024 * 1024
# Every VR of PS3.5 table 6.2-1: the two bytes after the first tag of an explicit-VR data set.
EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
# The groups a preamble-less file starts with: its File Meta Information (0002) or, without one,
# the data set's identifying elements (0008).
FIRST_DICOM_GROUPS = (0x0002, 0x0008)
RADIOGRAPH_BITS_ALLOCATED = (8, 16)
GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
# Start-of-frame markers of JPEG (ISO/IEC 10918-1: all but DHT C4, JPG C8, DAC CC) and JPEG-LS (F7).
JPEG_START_OF_FRAME = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
J2K_START = b"\xff\x4f\xff\x51"  # SOC then SIZ, the first marker segment of every JPEG 2000 codestream
J2K_SEARCH_BYTES = 4096  # a JP2 wrapper (not allowed in DICOM, written all the same) puts boxes before it
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 §9.1: digits and dots
MAX_UID_LENGTH = 64
CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")  # a DICOM CS value, safe to name in a message


class ImageReadError(ValueError):
    """An image file or payload that cannot be read as a radiograph; the message says why."""


class ImageTooLargeError(ImageReadError):
    """Decoding the image would take more memory than the decode budget; nothing was decoded."""


@dataclass(frozen=True)
class DicomSource:
    """The DICOM identity of the radiograph a result is about: its study, series and instance UIDs and
    its SOP class (empty where the file leaves one out). Hospital systems file results by these."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class Radiograph:
    """Decoded pixels (H, W) float32 in [0, 1], bone bright, with what the file told about them."""

    pixels: np.ndarray
    bits_stored: int
    pixel_spacing: tuple[float, float] | None
    source_format: str  # "dicom", "png" or "jpeg"
    photometric: str = "MONOCHROME2"
    body_part: str | None = None  # DICOM BodyPartExamined, upper case; None when the file does not say
    dicom: DicomSource | None = None  # the source's UIDs; None for PNG and JPEG
    # SHA-256 of the integer samples and the table that made ``pixels`` of them (equal digests,
    # equal pixels): the result cache's key for the image. None when not asked for.
    digest: bytes | None = None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def is_dicom_bytes(data: bytes) -> bool:
    """True for a Part 10 file, and for a data set without the preamble that starts like DICOM."""
    return has_part10_preamble(data) or starts_with_dicom_element(data)


def has_part10_preamble(data: bytes) -> bool:
    return data[PART10_PREFIX_OFFSET : PART10_PREFIX_OFFSET + 4] == b"DICM"


def starts_with_dicom_element(data: bytes) -> bool:
    """Whether the bytes open with a little-endian data element of group 0002 or 0008.

    Explicit VR: a known VR follows the tag. Implicit VR (old archives write no File Meta): a
    4-byte length follows that fits in the file. Random bytes pass this by chance about once in
    30 000; the parse and the image checks after it refuse those.
    """
    if len(data) < 8:
        return False
    group = struct.unpack_from("<H", data)[0]
    if group not in FIRST_DICOM_GROUPS:
        return False
    if data[4:6] in EXPLICIT_VRS:
        return True
    implicit_length = struct.unpack_from("<I", data, 4)[0]
    return group != 0x0002 and implicit_length <= len(data) - 8


def read_radiograph(
    source: str | Path | bytes, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES, *, digest: bool = False
) -> Radiograph:
    """Decode a radiograph from a path or raw bytes (DICOM recognised by its first bytes or suffix).

    ``digest``: also hash the samples for :attr:`Radiograph.digest` (a few milliseconds). Raises
    :class:`ImageTooLargeError` when decoding would exceed ``max_decode_bytes``, and
    :class:`ImageReadError` for anything else that is not a readable radiograph.
    """
    data, name = _bytes_and_name(source)
    if not data:
        raise ImageReadError(f"{name}: empty file")
    if is_dicom_bytes(data) or name.lower().endswith(DICOM_SUFFIXES):
        return _read_dicom(data, name, max_decode_bytes, digest)
    return _read_pillow(data, name, max_decode_bytes, digest)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, reading headers only where the format allows."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        pydicom = quiet_pydicom()
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


def _check_decode_budget(decoded_bytes: int, max_decode_bytes: int, name: str, what: str) -> None:
    """Refuse, before any pixel is decoded, an image whose decoded samples would exceed the budget."""
    if decoded_bytes > max_decode_bytes:
        raise ImageTooLargeError(
            f"{name}: image too large to decode: {what} would take {decoded_bytes} bytes,"
            f" over the decode budget of {max_decode_bytes} bytes"
        )


# ---------------------------------------------------------------- PNG and JPEG


def _read_pillow(data: bytes, name: str, max_decode_bytes: int, digest: bool) -> Radiograph:
    with _opened_image(data, name) as image:
        width, height = image.size
        # Image.open read the header only; the budget check comes before load() inflates anything.
        # Pillow merely warns between one and two times its own pixel limit: this check is ours.
        decoded = width * height * PILLOW_BYTES_PER_PIXEL.get(image.mode, PILLOW_WIDEST_PIXEL_BYTES)
        _check_decode_budget(decoded, max_decode_bytes, name, f"{width}x{height} pixels of mode {image.mode}")
        source_format = "jpeg" if image.format == "JPEG" else "png"
        array = _loaded_grey(image, name)
    bits = 16 if array.dtype == np.uint16 else 8
    table = table_of(array.dtype, lambda values: _full_scale_fraction(values, bits)) if digest else None
    return Radiograph(
        pixels=_full_scale_fraction(array, bits),
        bits_stored=bits,
        pixel_spacing=None,
        source_format=source_format,
        digest=samples_digest(array, table) if digest else None,
    )


def _full_scale_fraction(samples: np.ndarray, bits: int) -> np.ndarray:
    """Samples over their full scale, in one float32 array: a single step, faster in place than
    through a table (the table is made for the digest only)."""
    pixels = samples.astype(np.float32)
    pixels /= float(2**bits - 1)
    return pixels


def _opened_image(data: bytes, name: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # over twice Pillow's own pixel limit
        raise ImageTooLargeError(f"{name}: image too large to decode ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{name}: not a readable PNG or JPEG image ({error})") from error


def _loaded_grey(image: Image.Image, name: str) -> np.ndarray:
    try:
        image.load()
        return _pillow_to_grey(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{name}: not a readable PNG or JPEG image ({error})") from error


def _pillow_to_grey(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode == "I":
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


# ---------------------------------------------------------------- DICOM


@dataclass(frozen=True)
class DicomImageHeader:
    """The header fields the decoder uses, parsed and checked before any pixel is decoded."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    photometric: str
    slope: float
    intercept: float
    pixel_spacing: tuple[float, float] | None
    body_part: str | None

    @property
    def decoded_bytes(self) -> int:
        """What decoding the pixel data takes: frames × samples × rows × columns × bytes per sample."""
        return self.frames * self.samples * self.rows * self.columns * math.ceil(self.bits_allocated / 8)


def _read_dicom(data: bytes, name: str, max_decode_bytes: int, digest: bool) -> Radiograph:
    data = _inflated_dicom(data, name, max_decode_bytes + DEFLATED_HEADER_ALLOWANCE_BYTES)
    ds = _parsed_dicom(data, name)
    header = dicom_image_header(ds, name)
    _check_decode_budget(
        header.decoded_bytes,
        max_decode_bytes,
        name,
        f"{header.frames} frame(s) of {header.columns}x{header.rows} pixels,"
        f" {header.samples} sample(s) of {header.bits_allocated} bits",
    )
    _check_compressed_frame_size(ds, header, name)
    samples = _decoded_pixel_array(ds, name)
    presented = _dicom_presentation(samples, ds, header, name)
    return Radiograph(
        pixels=presented.pixels,
        bits_stored=header.bits_stored,
        pixel_spacing=header.pixel_spacing,
        source_format="dicom",
        photometric=header.photometric,
        body_part=header.body_part,
        dicom=dicom_source(ds),
        digest=samples_digest(samples, presented.table) if digest else None,
    )


def _dicom_presentation(samples: np.ndarray, ds, header: DicomImageHeader, name: str) -> Presentation:
    """Modality LUT, scaling by the stored range, MONOCHROME1 inverted: per sample value, one table."""

    def transform(values: np.ndarray) -> np.ndarray:
        pixels = _normalise(_modality_values(values, ds, name), header)
        return 1.0 - pixels if header.photometric == "MONOCHROME1" else pixels

    return present(samples, transform)


def dicom_source(ds) -> DicomSource:
    """The UIDs of a parsed data set. A UID is an identifier, not patient data, so it may be reported;
    a malformed or missing one reads as empty rather than refusing a readable image."""
    return DicomSource(
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        sop_class_uid=_uid(ds, "SOPClassUID"),
    )


def _uid(ds, keyword: str) -> str:
    try:
        value = str(ds.get(keyword) or "").strip().rstrip("\x00")
    except Exception:  # pydicom raises several types on a malformed value
        return ""
    return value if len(value) <= MAX_UID_LENGTH and UID_PATTERN.fullmatch(value) else ""


def quiet_pydicom():
    """pydicom, told not to report malformed header values. It would quote them ("Invalid value for
    VR IS: 'JANE'") in a warning and a log line, and header values carry patient data; the decoder
    checks every field it uses itself and names the field, never the value. Values are read the
    same either way (pydicom's IGNORE and WARN modes differ only in the message)."""
    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


def _parsed_dicom(data: bytes, name: str):
    """The data set, pixel data still encoded; with or without the Part 10 preamble and File Meta."""
    pydicom = quiet_pydicom()

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as error:
        raise ImageReadError(f"{name}: not a readable DICOM file ({error})") from error
    if "PixelData" not in ds:
        raise ImageReadError(f"{name}: DICOM file has no pixel data")
    _name_transfer_syntax_when_missing(ds)
    return ds


def _name_transfer_syntax_when_missing(ds) -> None:
    # A file without File Meta Information (older archives) does not name its transfer syntax;
    # pydicom guessed the encoding while parsing, and pixel data without File Meta is never
    # encapsulated, so the guess names it. pydicom will not decode pixels without it.
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    implicit_vr, little_endian = ds.original_encoding
    if implicit_vr:
        syntax = ImplicitVRLittleEndian
    else:
        syntax = ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


def dicom_image_header(ds, name: str) -> DicomImageHeader:
    """Every header field the decoder uses, parsed and checked; a bad one is an :class:`ImageReadError`.

    Kinds of image that are not a single plain radiograph (several frames, colour, several samples
    per pixel, bit depths other than 8 or 16) are refused here, before the decode budget.
    """
    frames = _positive_integer(ds, "NumberOfFrames", name, default=1)
    if frames > 1:
        raise ImageReadError(f"{name}: multi-frame DICOM is not a single radiograph")
    photometric = _photometric(ds, name)
    samples = _positive_integer(ds, "SamplesPerPixel", name, default=1)
    if samples != 1:
        raise ImageReadError(f"{name}: DICOM SamplesPerPixel is {samples}; a radiograph has 1 sample per pixel")
    bits_allocated = _positive_integer(ds, "BitsAllocated", name)
    if bits_allocated not in RADIOGRAPH_BITS_ALLOCATED:
        raise ImageReadError(f"{name}: DICOM BitsAllocated is {bits_allocated}; radiographs are read with 8 or 16")
    bits_stored = _positive_integer(ds, "BitsStored", name, default=bits_allocated)
    if bits_stored > bits_allocated:
        raise ImageReadError(f"{name}: DICOM BitsStored ({bits_stored}) exceeds BitsAllocated ({bits_allocated})")
    return DicomImageHeader(
        rows=_positive_integer(ds, "Rows", name),
        columns=_positive_integer(ds, "Columns", name),
        frames=frames,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        photometric=photometric,
        # A slope of 0 reads as 1, as this decoder always read it: 0 would scale by a zero range.
        slope=_finite_number(ds, "RescaleSlope", name, default=1.0) or 1.0,
        intercept=_finite_number(ds, "RescaleIntercept", name, default=0.0),
        pixel_spacing=_dicom_spacing(ds),
        body_part=str(_header_value(ds, "BodyPartExamined", name) or "").strip().upper() or None,
    )


def _header_value(ds, keyword: str, name: str):
    """The element's value; None when absent or empty. Never lets pydicom's conversion errors out."""
    try:
        value = ds.get(keyword)
    except Exception as error:  # pydicom raises on malformed values when its validation says so
        raise ImageReadError(f"{name}: DICOM {keyword} cannot be read") from error
    if value is None or value == "":
        return None
    return value


def _positive_integer(ds, keyword: str, name: str, default: int | None = None) -> int:
    value = _header_value(ds, keyword, name)
    if value is None:
        if default is None:
            raise ImageReadError(f"{name}: DICOM header has no {keyword}")
        return default
    try:
        number = int(value)
    except (TypeError, ValueError) as error:
        raise ImageReadError(f"{name}: DICOM {keyword} is not an integer") from error
    if number < 1:
        raise ImageReadError(f"{name}: DICOM {keyword} is {number}; it must be at least 1")
    return number


def _finite_number(ds, keyword: str, name: str, default: float) -> float:
    value = _header_value(ds, keyword, name)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ImageReadError(f"{name}: DICOM {keyword} is not a number") from error
    if not math.isfinite(number):
        raise ImageReadError(f"{name}: DICOM {keyword} is not a finite number")
    return number


def _photometric(ds, name: str) -> str:
    value = _header_value(ds, "PhotometricInterpretation", name)
    photometric = "MONOCHROME2" if value is None else str(value).strip()
    if photometric not in GREY_PHOTOMETRICS:
        shown = photometric if CODE_STRING.fullmatch(photometric) else "an unknown value"
        raise ImageReadError(f"{name}: colour DICOM ({shown}) is not a radiograph")
    return photometric


def _dicom_spacing(ds) -> tuple[float, float] | None:
    # Reported, never used to size anything: a malformed spacing means "unknown", not a refusal.
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
            spacing = (float(value[0]), float(value[1])) if value is not None and len(value) == 2 else None
        except Exception:  # malformed value or element; pydicom raises several types
            continue
        if spacing is not None and all(math.isfinite(v) and v > 0 for v in spacing):
            return spacing
    return None


def _check_compressed_frame_size(ds, header: DicomImageHeader, name: str) -> None:
    """A JPEG or JPEG 2000 frame must be the size the header says, checked before its codec runs.

    Codecs allocate a frame at the size their own codestream claims, and pydicom compares that with
    the header only after decoding: a 64 × 64 header over a frame claiming 30000 × 30000 would cost
    gigabytes before being refused. A mismatch is refused; a decode would fail on it anyway.
    """
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

    syntax = ds.file_meta.TransferSyntaxUID
    if syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        kind, measure = "JPEG", _jpeg_frame_size
    elif syntax in JPEG2000TransferSyntaxes:
        kind, measure = "JPEG 2000", _j2k_frame_size
    else:  # native pixels, or RLE (decoded at the header's size), or a syntax pydicom refuses
        return
    size = measure(_first_fragment(ds.PixelData, name))
    if size is None:
        raise ImageReadError(f"{name}: DICOM compressed frame has no readable {kind} header")
    if size != (header.columns, header.rows, header.samples):
        columns, rows, components = size
        raise ImageReadError(
            f"{name}: DICOM {kind} frame is {columns}x{rows} pixels with {components} component(s);"
            f" the header says {header.columns}x{header.rows} with {header.samples}"
        )


def _first_fragment(pixel_data: bytes, name: str) -> bytes:
    """The first fragment of encapsulated pixel data: where a frame's codestream header lies."""
    from pydicom.encaps import generate_fragments

    try:
        fragments = generate_fragments(pixel_data)
        next(fragments, None)  # the Basic Offset Table item, empty or not
        return next(fragments, b"")
    except Exception as error:  # malformed item tags or lengths
        raise ImageReadError(f"{name}: DICOM encapsulated pixel data cannot be read") from error


def _jpeg_frame_size(codestream: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG or JPEG-LS start-of-frame segment; None without one."""
    if not codestream.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(codestream) and codestream[offset] == 0xFF:
        marker = codestream[offset + 1]
        if marker == 0xFF:  # a fill byte before the marker
            offset += 1
            continue
        if marker in JPEG_START_OF_FRAME:
            if offset + 10 > len(codestream):
                return None
            height, width = struct.unpack_from(">HH", codestream, offset + 5)
            return width, height, codestream[offset + 9]
        offset += 2 + struct.unpack_from(">H", codestream, offset + 2)[0]
    return None


def _j2k_frame_size(codestream: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG 2000 SIZ segment; None without one."""
    start = codestream.find(J2K_START, 0, J2K_SEARCH_BYTES)
    if start < 0 or start + 4 + 38 > len(codestream):
        return None
    siz = start + 4  # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, tile sizes and offsets, then Csiz at 36
    width, height, x_offset, y_offset = struct.unpack_from(">IIII", codestream, siz + 4)
    components = struct.unpack_from(">H", codestream, siz + 36)[0]
    if x_offset > width or y_offset > height:
        return None
    return width - x_offset, height - y_offset, components


def _decoded_pixel_array(ds, name: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as error:
        raise ImageReadError(f"{name}: DICOM pixel data cannot be decoded ({error})") from error


def _modality_values(raw: np.ndarray, ds, name: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    try:
        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    except Exception as error:  # a malformed Modality LUT Sequence
        raise ImageReadError(f"{name}: DICOM Modality LUT cannot be applied") from error


def _normalise(values: np.ndarray, header: DicomImageHeader) -> np.ndarray:
    # Scale by the stored range rather than the image's own min/max so that a darker exposure
    # stays darker: that variation is part of what models must learn to ignore.
    slope, intercept = header.slope, header.intercept
    low, high = intercept, intercept + slope * (2**header.bits_stored - 1)
    if slope < 0:
        low, high = high, low
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- Deflated transfer syntax


def _inflated_dicom(data: bytes, name: str, max_inflated_bytes: int) -> bytes:
    """``data`` itself, unless its transfer syntax is Deflated Explicit VR Little Endian: then the
    same file with the data set inflated and the transfer syntax Explicit VR Little Endian.

    pydicom would inflate the whole data set in one call before reading any of it; here it is
    inflated a step at a time and refused as soon as it outgrows ``max_inflated_bytes``.
    """
    meta, dataset_start = _file_meta(data)
    if meta is None or meta.get("TransferSyntaxUID") != DEFLATED_TRANSFER_SYNTAX:
        return data
    inflated = bytearray(_explicit_little_endian_header(meta))
    _inflate_into(inflated, memoryview(data)[dataset_start:], max_inflated_bytes, name)
    return bytes(inflated)


def _file_meta(data: bytes):
    """(File Meta Information, offset of the data set after it); (None, 0) when it cannot be read."""
    from pydicom.filereader import read_dataset, read_preamble

    stream = io.BytesIO(data)
    try:
        read_preamble(stream, force=True)  # leaves the stream after "DICM", or at 0 without a preamble
        meta = read_dataset(stream, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 0x0002)
    except Exception:  # unreadable here: the full parse says why
        return None, 0
    return meta, stream.tell()


def _explicit_little_endian_header(meta) -> bytes:
    """Preamble, "DICM" and ``meta`` with the transfer syntax Explicit VR Little Endian."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset(meta)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = DicomBytesIO()
    header.write(b"\0" * PART10_PREFIX_OFFSET + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=False)  # recomputes the group length
    return header.getvalue()


def _inflate_into(out: bytearray, deflated: memoryview, max_inflated_bytes: int, name: str) -> None:
    """Append the raw deflate stream ``deflated``, inflated a step at a time; refused as soon as it
    is known to inflate to more than ``max_inflated_bytes``, so a bomb never lies whole in memory."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: bytes | memoryview = deflated
    inflated_bytes = 0
    try:
        while True:
            step = inflater.decompress(pending, INFLATE_STEP_BYTES)
            inflated_bytes += len(step)
            if inflated_bytes > max_inflated_bytes:
                raise ImageTooLargeError(
                    f"{name}: deflated DICOM data set inflates to more than {max_inflated_bytes} bytes"
                    f" from {len(deflated)}, over the decode budget"
                )
            out += step
            pending = inflater.unconsumed_tail
            if inflater.eof or not step:
                break
    except zlib.error as error:
        raise ImageReadError(f"{name}: deflated DICOM data set cannot be inflated ({error})") from error
    if not inflater.eof:
        raise ImageReadError(f"{name}: deflated DICOM data set is truncated")
