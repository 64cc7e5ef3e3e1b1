"""Decode hardening (issue #11): bombs refused before inflation, a decode budget counted in bytes
from the header, every DICOM header field checked (400, never 500), DICOM without the Part 10
preamble read, and the study capped in bytes and radiographs.

Each finding is checked where it is decided (the pipeline's decode step) and end to end through the
real REST app (uvicorn on a loopback port) and the real gRPC server, each over the embedded backend
with tiny untrained models: the status, the message, and that the service keeps serving. The bombs
are built small: a compressed MiB of zeros is repeated (full flushes make the pieces independent),
so a 512 MiB pixel array never exists in the test either. Memory is measured as the growth of a
fresh process's peak resident set while it refuses a bomb: a count of bytes, not a timing.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pydicom
import pytest
from gateway_support import ApiKey, keyed_channel, phantom_dicom, phantom_png, write_tiny_store
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)
from web_support import live_gateway

from avn.pipeline.decode import decode_payload
from avn.pipeline.errors import InvalidArgument, InvalidImage, PayloadTooLarge
from avn.pipeline.pipeline import Pipeline
from avn.pipeline.results import ImagePayload, StudyRequest
from avn.serving.inprocess import InProcessBackend
from gateway.grpc_server import BackgroundGrpcServer, pb
from gateway.proto import load
from gateway.rest import create_app
from gateway.service import build_pipeline
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
PATIENT_NAME, PATIENT_ID = "DOE^JANE", "PID-4711"  # planted in every test DICOM; must reach no message
PLANTED = "JANE"  # written into malformed numeric fields: a refusal must not quote the value
SIDE = 40  # pixels per side of the small test images (the decoder's minimum is 32)
BOMB_ROWS = BOMB_COLUMNS = 16384  # 16-bit: 512 MiB of pixels, sent as about half a MiB
PNG_BOMB_SIZE = (12000, 8000)  # 96 Mpx: 1.5 times the 64 Mpx the old decoder set as Pillow's limit
RPC_TIMEOUT_S = 60


# ---------------------------------------------------------------- builders


def zeros_deflated(count: int) -> bytes:
    """A raw deflate stream (not final) of ``count`` zero bytes, in O(1 MiB) memory."""
    step = MIB

    def piece(size: int) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return compressor.compress(bytes(size)) + compressor.flush(zlib.Z_FULL_FLUSH)

    whole, rest = divmod(count, step)
    return piece(step) * whole + (piece(rest) if rest else b"")


def deflated(prefix: bytes, zeros: int) -> bytes:
    """A complete raw deflate stream of ``prefix`` followed by ``zeros`` zero bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_block = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH)
    return head + zeros_deflated(zeros) + final_block


def image_dataset(rows: int = SIDE, columns: int = SIDE, *, pixels: bool = True, **fields: object) -> Dataset:
    """A 16-bit MONOCHROME2 CR image data set with planted patient data; ``fields`` override tags."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in fields.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    if pixels:
        eight_bits = fields.get("BitsAllocated") == 8
        gradient = np.linspace(0, 255 if eight_bits else 4095, rows * columns)
        # OW named outright: pydicom would otherwise pick OB or OW from BitsAllocated, which some cases drop.
        ds.add_new(0x7FE00010, "OW", gradient.astype(np.uint8 if eight_bits else np.uint16).tobytes())
    return ds


def dataset_bytes(ds: Dataset, *, implicit_vr: bool = False) -> bytes:
    """The data set alone, little endian: no preamble, no File Meta Information."""
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=implicit_vr, little_endian=True)
    return buffer.getvalue()


def part10_header(transfer_syntax: str, sop_instance: str | None = None) -> bytes:
    """Preamble, "DICM" and a standard File Meta Information group naming ``transfer_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = sop_instance or generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def part10(ds: Dataset) -> bytes:
    """A Part 10 file, Explicit VR Little Endian."""
    return part10_header(ExplicitVRLittleEndian, ds.SOPInstanceUID) + dataset_bytes(ds)


def deflated_part10(ds: Dataset) -> bytes:
    """A Part 10 file, Deflated Explicit VR Little Endian."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(dataset_bytes(ds)) + compressor.flush()
    return part10_header(DeflatedExplicitVRLittleEndian, ds.SOPInstanceUID) + body


def deflate_bomb(rows: int = BOMB_ROWS, columns: int = BOMB_COLUMNS) -> bytes:
    """A Deflated DICOM whose header honestly claims rows × columns 16-bit zero pixels."""
    header = dataset_bytes(image_dataset(rows, columns, pixels=False))
    pixel_bytes = rows * columns * 2
    pixel_element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    return part10_header(DeflatedExplicitVRLittleEndian) + deflated(header + pixel_element, pixel_bytes)


def jpeg_frame(width: int, height: int) -> bytes:
    """A baseline JPEG of SIDE × SIDE grey pixels whose start-of-frame claims width × height."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((SIDE, SIDE), 90, np.uint8)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def j2k_frame(width: int, height: int) -> bytes:
    """A lossless JPEG 2000 codestream of SIDE × SIDE pixels whose SIZ claims width × height."""
    ds = image_dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    fragments = generate_fragments(ds.PixelData)
    next(fragments)  # the Basic Offset Table
    codestream = next(fragments)
    assert codestream.startswith(b"\xff\x4f\xff\x51")
    return codestream[:8] + struct.pack(">II", width, height) + codestream[16:]


def compressed_dicom(kind: str, width: int = SIDE, height: int = SIDE, frame: bytes | None = None) -> bytes:
    """A SIDE × SIDE DICOM whose one encapsulated frame is a JPEG or JPEG 2000 claiming width × height."""
    if kind == "jpeg":
        syntax, bits = JPEGBaseline8Bit, {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}
        frame = frame if frame is not None else jpeg_frame(width, height)
    else:
        syntax, bits = JPEG2000Lossless, {}
        frame = frame if frame is not None else j2k_frame(width, height)
    ds = image_dataset(pixels=False, **bits)
    ds.add_new(0x7FE00010, "OB", encapsulate([frame]))
    return part10_header(syntax, ds.SOPInstanceUID) + dataset_bytes(ds)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = PNG_BOMB_SIZE[0], height: int = PNG_BOMB_SIZE[1]) -> bytes:
    """A valid 8-bit grey PNG of zero rows, every row present in the (tiny) compressed stream."""
    raw = (1 + width) * height  # a filter byte before each row
    adler32 = ((raw % 65521) << 16) | 1  # of zeros: a stays 1, b counts the bytes
    idat = b"\x78\x9c" + deflated(b"", raw) + struct.pack(">I", adler32)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def with_value(data: bytes, keyword: str, value: bytes) -> bytes:
    """``data`` (Explicit VR Little Endian) with the value of ``keyword``'s element replaced verbatim,
    whatever its VR allows: the malformed files real archives hold."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    vr = pydicom.datadict.dictionary_VR(tag).encode()
    marker = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    start = data.index(marker, 132)
    length = struct.unpack_from("<H", data, start + 6)[0]
    value = value + b" " * (len(value) % 2)  # DICOM values have even lengths
    return data[:start] + marker + struct.pack("<H", len(value)) + value + data[start + 8 + length :]


def decode(data: bytes, max_decode_bytes: int | None = None):
    limits = {} if max_decode_bytes is None else {"max_decode_bytes": max_decode_bytes}
    return decode_payload(ImagePayload(data), **limits)


def assert_no_patient_data(message: str) -> None:
    for planted in (PATIENT_NAME, "DOE", PATIENT_ID, PLANTED):
        assert planted not in message, message


# ---------------------------------------------------------------- the bombs


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"deflate": deflate_bomb(), "png": png_bomb(), "jpeg-frame": compressed_dicom("jpeg", 30000, 30000)}


def test_the_bomb_builders_make_valid_files_that_decode_when_small() -> None:
    """The refusals below are about size: the same construction, small, decodes to zeros."""
    small_dicom = decode(deflate_bomb(48, 64))
    small_png = decode(png_bomb(64, 48))
    assert small_dicom.source_format == "dicom" and small_dicom.pixels.shape == (48, 64)
    assert small_png.source_format == "png" and small_png.pixels.shape == (48, 64)
    assert not small_dicom.pixels.any() and not small_png.pixels.any()


def test_a_deflate_bomb_is_refused_while_it_inflates(bombs: dict[str, bytes]) -> None:
    bomb = bombs["deflate"]
    assert len(bomb) < MIB and BOMB_ROWS * BOMB_COLUMNS * 2 > 500 * len(bomb)  # grows about 1000×
    with pytest.raises(PayloadTooLarge, match="deflated DICOM data set inflates to more than") as refused:
        decode(bomb)
    assert "over the decode budget" in str(refused.value)
    assert_no_patient_data(str(refused.value))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns at open; we refuse
def test_a_png_in_pillows_warning_band_is_refused_by_its_header(bombs: dict[str, bytes]) -> None:
    width, height = PNG_BOMB_SIZE
    assert 1 < width * height / 8000**2 < 2 and len(bombs["png"]) < 256 * 1024
    with pytest.raises(PayloadTooLarge, match=f"too large to decode: {width}x{height} pixels of mode L"):
        decode(bombs["png"])


REFUSAL_PROBE = textwrap.dedent(
    """
    import re, sys
    from pathlib import Path

    from avn.pipeline.decode import decode_payload
    from avn.pipeline.errors import DiagnosisError
    from avn.pipeline.results import ImagePayload

    def kib(field):
        return int(re.search(rf"^{field}:\\s+(\\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))

    warm_up, bomb = Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]).read_bytes()
    budget = int(sys.argv[3])
    decode_payload(ImagePayload(warm_up))  # lazy imports (pydicom, Pillow plug-ins) before measuring
    Path("/proc/self/clear_refs").write_text("5")  # the peak resident set starts again from now
    before = kib("VmRSS")
    try:
        decode_payload(ImagePayload(bomb), max_decode_bytes=budget)
        outcome = "decoded"
    except DiagnosisError as refusal:
        outcome = type(refusal).__name__
    print(outcome, (kib("VmHWM") - before) * 1024)
    """
)


def peak_growth_while_decoding(tmp_path: Path, bomb: bytes, warm_up: bytes, budget: int) -> tuple[str, int]:
    """(outcome, bytes the peak resident set grew by) of decoding ``bomb`` in a fresh process."""
    (tmp_path / "bomb").write_bytes(bomb)
    (tmp_path / "warm-up").write_bytes(warm_up)
    result = subprocess.run(
        [sys.executable, "-c", REFUSAL_PROBE, str(tmp_path / "warm-up"), str(tmp_path / "bomb"), str(budget)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    outcome, grown = result.stdout.split()
    return outcome, int(grown)


@pytest.mark.parametrize(
    ("kind", "refusal"), [("deflate", "PayloadTooLarge"), ("png", "PayloadTooLarge"), ("jpeg-frame", "InvalidImage")]
)
def test_refusing_a_bomb_costs_no_more_memory_than_the_budget(tmp_path, bombs, kind, refusal) -> None:
    # The deflate bomb is inflated until it passes the budget (plus its 4 MiB header allowance); the
    # PNG is refused on its header, the JPEG frame on its codestream's. Before these checks the
    # decoder's peak grew by 1.07 GB, 0.96 GB and 4.3 GB.
    budget = 16 * MIB
    warm_up = png_bytes(np.zeros((SIDE, SIDE), np.uint8)) if kind == "png" else part10(image_dataset())
    outcome, grown = peak_growth_while_decoding(tmp_path, bombs[kind], warm_up, budget)
    assert outcome == refusal
    assert grown < 3 * budget, f"refusing the {kind} bomb grew the peak resident set by {grown} bytes"


# ---------------------------------------------------------------- the decode budget, in bytes


@pytest.mark.parametrize(
    ("make", "cost"),
    [
        (lambda: part10(image_dataset()), SIDE * SIDE * 2),  # 16 bits allocated
        (lambda: part10(image_dataset(BitsAllocated=8, BitsStored=8, HighBit=7)), SIDE * SIDE),
        (lambda: deflated_part10(image_dataset()), SIDE * SIDE * 2),
        (lambda: png_bytes(np.zeros((SIDE, SIDE), np.uint8)), SIDE * SIDE),
        (lambda: png_bytes(np.zeros((SIDE, SIDE), np.uint16)), SIDE * SIDE * 2),
        (lambda: png_bytes(np.zeros((SIDE, SIDE, 3), np.uint8)), SIDE * SIDE * 4),  # Pillow holds RGB in 4 bytes
    ],
    ids=["dicom-16", "dicom-8", "dicom-deflated", "png-8", "png-16", "png-rgb"],
)
def test_the_decode_budget_counts_decoded_bytes_from_the_header(make, cost) -> None:
    data = make()
    with pytest.raises(PayloadTooLarge, match=f"would take {cost} bytes, over the decode budget of {cost - 1} bytes"):
        decode(data, max_decode_bytes=cost - 1)
    assert decode(data, max_decode_bytes=cost).pixels.shape == (SIDE, SIDE)


def test_a_multi_frame_header_is_refused_before_its_pixels_are_decoded() -> None:
    # 1000 frames claimed over four bytes of pixel data: refused on the header, not by the decoder.
    data = part10(image_dataset(NumberOfFrames=1000, pixels=False, PixelData=b"\0\0\0\0"))
    with pytest.raises(InvalidImage, match="multi-frame DICOM is not a single radiograph"):
        decode(data)


@pytest.mark.parametrize("kind", ["jpeg", "j2k"])
def test_a_compressed_frame_the_size_of_its_header_is_decoded(kind: str) -> None:
    radiograph = decode(compressed_dicom(kind))
    assert radiograph.pixels.shape == (SIDE, SIDE) and radiograph.source_format == "dicom"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda: compressed_dicom("jpeg", 30000, 30000), "JPEG frame is 30000x30000 pixels with 1 component"),
        (lambda: compressed_dicom("j2k", 30000, 20000), "JPEG 2000 frame is 30000x20000 pixels with 1 component"),
        (lambda: compressed_dicom("jpeg", SIDE, SIDE + 1), f"the header says {SIDE}x{SIDE} with 1"),
        (lambda: compressed_dicom("jpeg", frame=b"\xff\xd8\xff\xe0\x00\x04ab" + bytes(40)), "no readable JPEG header"),
        (lambda: compressed_dicom("j2k", frame=bytes(64)), "no readable JPEG 2000 header"),
    ],
    ids=["jpeg-larger", "j2k-larger", "jpeg-one-row-more", "jpeg-no-frame-header", "j2k-no-siz"],
)
def test_a_compressed_frame_that_contradicts_its_header_is_refused_before_its_codec_runs(data, message) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode(data())


# ---------------------------------------------------------------- every header field, 400 not 500


def malformed(keyword: str, value: bytes, **fields: object) -> bytes:
    return with_value(part10(image_dataset(**fields)), keyword, value)


HEADER_CASES = {
    "samples-3": (lambda: part10(image_dataset(SamplesPerPixel=3)), "SamplesPerPixel is 3"),
    "bits-12": (lambda: part10(image_dataset(BitsAllocated=12)), "BitsAllocated is 12"),
    "bits-64": (lambda: part10(image_dataset(BitsAllocated=64)), "BitsAllocated is 64"),
    "bits-1": (lambda: part10(image_dataset(BitsAllocated=1, BitsStored=1, HighBit=0)), "BitsAllocated is 1"),
    "stored-over-allocated": (lambda: part10(image_dataset(BitsStored=20)), r"BitsStored \(20\) exceeds"),
    "frames-text": (lambda: malformed("NumberOfFrames", PLANTED.encode(), NumberOfFrames=1), "NumberOfFrames is not"),
    "frames-zero": (lambda: part10(image_dataset(NumberOfFrames=0)), "NumberOfFrames is 0"),
    "frames-several-values": (lambda: malformed("NumberOfFrames", b"1\\2", NumberOfFrames=1), "NumberOfFrames is not"),
    "slope-text": (lambda: malformed("RescaleSlope", PLANTED.encode(), RescaleSlope=1), "RescaleSlope is not a number"),
    "intercept-text": (lambda: malformed("RescaleIntercept", b"x", RescaleIntercept=0), "RescaleIntercept is not a"),
    "intercept-nan": (lambda: malformed("RescaleIntercept", b"nan", RescaleIntercept=0), "not a finite number"),
    "slope-infinite": (lambda: malformed("RescaleSlope", b"1e999", RescaleSlope=1), "not a finite number"),
    "rows-missing": (lambda: part10(image_dataset(pixels=True, Rows=None)), "has no Rows"),
    "columns-zero": (lambda: part10(image_dataset(Columns=0)), "Columns is 0"),
    "bits-allocated-missing": (lambda: part10(image_dataset(BitsAllocated=None)), "has no BitsAllocated"),
    "photometric-unknown": (lambda: malformed("PhotometricInterpretation", b"JANE^DOE"), r"\(an unknown value\)"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_a_bad_header_field_is_a_400_naming_the_field_without_its_value(case: str) -> None:
    make, message = HEADER_CASES[case]
    with pytest.raises(InvalidImage, match=message) as refused:
        decode(make())
    assert_no_patient_data(str(refused.value))


def test_a_malformed_pixel_spacing_reads_as_unknown() -> None:
    # Spacing is reported, never used to size anything: it must not turn a radiograph into a 500.
    data = malformed("PixelSpacing", b"JANE\\x", PixelSpacing=[0.1, 0.1])
    radiograph = decode(data)
    assert radiograph.pixel_spacing is None and radiograph.pixels.shape == (SIDE, SIDE)
    assert decode(part10(image_dataset(PixelSpacing=[0.1, 0.2]))).pixel_spacing == (0.1, 0.2)


# ---------------------------------------------------------------- DICOM without the preamble


def _reference() -> tuple[Dataset, np.ndarray]:
    ds = image_dataset()
    return ds, decode(part10(ds)).pixels


@pytest.mark.parametrize(
    "strip",
    [
        lambda ds: part10(ds)[132:],  # File Meta Information first, no preamble or "DICM"
        lambda ds: dataset_bytes(ds, implicit_vr=True),  # no File Meta at all, Implicit VR (old archives)
        lambda ds: dataset_bytes(ds, implicit_vr=False),  # no File Meta, Explicit VR
        lambda ds: deflated_part10(ds)[132:],  # Deflated, File Meta first
    ],
    ids=["meta-first", "implicit-no-meta", "explicit-no-meta", "deflated-meta-first"],
)
def test_a_dicom_without_the_preamble_is_read_like_the_part10_file(strip) -> None:
    ds, expected = _reference()
    radiograph = decode_payload(ImagePayload(strip(ds), "application/dicom"))
    assert radiograph.source_format == "dicom"
    np.testing.assert_array_equal(radiograph.pixels, expected)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.random.default_rng(11).bytes(4096), "not a PNG, JPEG or DICOM file"),
        (b"JANE DOE, born 1970; not an image", "not a PNG, JPEG or DICOM file"),
        # Starts like a DICOM element, but there is no image behind it.
        (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + bytes(200), "not a readable DICOM file|no pixel data"),
        (dataset_bytes(image_dataset(pixels=False)), "DICOM file has no pixel data"),
    ],
    ids=["random", "text", "element-then-zeros", "header-only"],
)
def test_bytes_that_are_not_a_dicom_image_still_get_a_clear_refusal(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message) as refused:
        decode(data)
    assert_no_patient_data(str(refused.value))


def test_a_truncated_or_corrupt_deflated_data_set_is_a_400() -> None:
    whole = deflated_part10(image_dataset())
    with pytest.raises(InvalidImage, match="deflated DICOM data set is truncated"):
        decode(whole[:-40])
    corrupt = whole[:400] + b"\xff" * 64 + whole[464:]
    with pytest.raises(InvalidImage, match="deflated DICOM data set"):
        decode(corrupt)


# ---------------------------------------------------------------- the study


def test_a_study_is_capped_in_radiographs_and_bytes_before_anything_is_decoded() -> None:
    pipeline = Pipeline(backend=None, max_study_radiographs=2, max_study_bytes=1000)  # never reaches a model
    garbage = ImagePayload(b"never decoded")

    def study(*payloads: ImagePayload) -> None:
        import asyncio

        asyncio.run(pipeline.diagnose_study(StudyRequest(payloads)))

    with pytest.raises(PayloadTooLarge, match="a study holds at most 2 radiographs, got 3"):
        study(garbage, garbage, garbage)
    with pytest.raises(PayloadTooLarge, match="a study of 1200 bytes is over the limit of 1000 bytes"):
        study(ImagePayload(bytes(600)), ImagePayload(bytes(600)))
    with pytest.raises(InvalidArgument, match="at least one"):
        study()


def test_the_study_caps_and_the_decode_budget_are_settings() -> None:
    settings = Settings(max_study_bytes=12345, max_study_radiographs=3, max_decode_bytes=999, case_bank=None)
    pipeline = build_pipeline(settings, backend=InProcessBackend({}))
    assert (pipeline.max_study_bytes, pipeline.max_study_radiographs, pipeline.max_decode_bytes) == (12345, 3, 999)
    documented = (ROOT / "docs" / "configuration.md").read_text()  # generated from the settings
    for name in ("AVN_MAX_DECODE_BYTES", "AVN_MAX_STUDY_BYTES", "AVN_MAX_STUDY_RADIOGRAPHS"):
        assert f"`{name}`" in documented


# ---------------------------------------------------------------- end to end: REST and gRPC


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, api_key: ApiKey) -> Iterator[dict]:
    """The REST app under uvicorn and the gRPC server, both on loopback, over the embedded backend."""
    root = tmp_path_factory.mktemp("hardening")
    store = write_tiny_store(root)
    png = phantom_png(root, 0).read_bytes()
    # Two phantom PNGs are one byte over the study cap; the REST body limit (cap + multipart
    # overhead) still lets them in, so the pipeline's check answers on both protocols.
    settings = Settings(
        max_study_radiographs=2, max_study_bytes=2 * len(png) - 1, case_bank=None, api_keys_file=api_key.file
    )
    rest_pipeline = build_pipeline(settings, InProcessBackend.from_store(store))
    grpc_pipeline = build_pipeline(settings, InProcessBackend.from_store(store))  # its own loop, its own pipeline
    with (
        live_gateway(create_app(rest_pipeline, settings)) as rest,
        BackgroundGrpcServer(grpc_pipeline, authenticator=api_key.authenticator()) as grpc_server,
    ):
        with keyed_channel(grpc_server.target, api_key.key) as channel:
            yield {
                "http": Http(rest.url, api_key.headers),
                "stub": load().services.DiagnosisStub(channel),
                "png": png,
                "dicom": phantom_dicom(root, 1).read_bytes(),
            }


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass(frozen=True)
class Http:
    """Plain HTTP/1.1 to the live gateway (urllib, as the web tests)."""

    url: str
    headers: dict[str, str]  # the API key's

    def post(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> Answer:
        request = urllib.request.Request(f"{self.url}{path}", data=body, method="POST", headers=self.headers)
        request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())

    def post_files(self, path: str, files: list[bytes]) -> Answer:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{index}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + data
            + b"\r\n"
            for index, data in enumerate(files)
        ]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.post(path, body, f"multipart/form-data; boundary={boundary}")


TINY_PNG = png_bytes(np.zeros((SIDE, SIDE), np.uint8))  # refused by count before it is decoded


def rest_error(response: Answer, status: int, code: str, words: str) -> None:
    assert response.status == status, response.body
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error
    assert response.headers["avn-error-type"] == code
    assert_no_patient_data(error["message"])


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_rest_refuses_bombs_and_bad_headers_and_keeps_serving(served: dict, bombs: dict[str, bytes]) -> None:
    http = served["http"]
    rest_error(http.post("/v1/diagnose", bombs["deflate"]), 413, "PayloadTooLarge", "inflates to more than")
    rest_error(http.post("/v1/diagnose", bombs["png"]), 413, "PayloadTooLarge", "over the decode budget")
    frames = malformed("NumberOfFrames", PLANTED.encode(), NumberOfFrames=1)
    rest_error(http.post("/v1/diagnose", frames), 400, "InvalidImage", "NumberOfFrames is not an integer")
    samples = part10(image_dataset(SamplesPerPixel=3))
    rest_error(http.post("/v1/render", samples), 400, "InvalidImage", "SamplesPerPixel is 3")
    preamble_less = http.post("/v1/diagnose", served["dicom"][132:])
    assert preamble_less.status in (200, 422), preamble_less.body  # read; 422 only if no head is found
    assert http.post("/v1/render", served["dicom"][132:]).status == 200
    assert http.post("/v1/diagnose", served["png"]).status == 200  # still serving


def test_rest_caps_the_study(served: dict) -> None:
    http, png = served["http"], served["png"]
    three = http.post_files("/v1/studies", [TINY_PNG] * 3)
    rest_error(three, 413, "PayloadTooLarge", "a study holds at most 2 radiographs, got 3")
    two = http.post_files("/v1/studies", [png, png])
    rest_error(two, 413, "PayloadTooLarge", f"a study of {2 * len(png)} bytes is over the limit")
    assert http.post_files("/v1/studies", [png]).status == 200


def grpc_refusal(call, code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert error.code() == code and words in error.details(), error.details()
    assert_no_patient_data(error.details())


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_grpc_refuses_bombs_and_bad_headers_and_keeps_serving(served: dict, bombs: dict[str, bytes]) -> None:
    stub = served["stub"]

    def diagnose(data: bytes):
        return lambda: stub.Diagnose(pb.DiagnoseRequest(image=data), timeout=RPC_TIMEOUT_S)

    grpc_refusal(diagnose(bombs["deflate"]), grpc.StatusCode.RESOURCE_EXHAUSTED, "inflates to more than")
    grpc_refusal(diagnose(bombs["png"]), grpc.StatusCode.RESOURCE_EXHAUSTED, "over the decode budget")
    slope = malformed("RescaleSlope", PLANTED.encode(), RescaleSlope=1)
    grpc_refusal(diagnose(slope), grpc.StatusCode.INVALID_ARGUMENT, "RescaleSlope is not a number")
    bits = part10(image_dataset(BitsAllocated=12))
    grpc_refusal(diagnose(bits), grpc.StatusCode.INVALID_ARGUMENT, "BitsAllocated is 12")
    try:
        diagnose(served["dicom"][132:])()  # read without its preamble
    except grpc.RpcError as error:  # an untrained detector may find no head: then the image was read
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert len(diagnose(served["png"])().heads) >= 1  # still serving


def test_grpc_caps_the_study(served: dict) -> None:
    stub, png = served["stub"], served["png"]

    def study(*images: bytes):
        request = pb.StudyRequest(radiographs=[pb.Radiograph(image=image) for image in images])
        return lambda: stub.DiagnoseStudy(request, timeout=RPC_TIMEOUT_S)

    grpc_refusal(study(*[TINY_PNG] * 3), grpc.StatusCode.RESOURCE_EXHAUSTED, "a study holds at most 2 radiographs")
    grpc_refusal(study(png, png), grpc.StatusCode.RESOURCE_EXHAUSTED, f"a study of {2 * len(png)} bytes is over")
    assert len(study(png)().sides) >= 1
