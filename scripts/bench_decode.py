"""Benchmark the gateway's decode step on one full-size radiograph, per file type.

Usage: python scripts/bench_decode.py [--dicom FILE | --scale S] [--repeats N] [--reduce] [--json OUT]

From one full-size DICOM (a phantom rendered and written by the project's writer, unless --dicom
names a file) it writes the same pixels as uncompressed DICOM, RLE Lossless, JPEG 2000 Lossless
(when an encoder is installed) and a 16-bit PNG, and times per file, best of N: the decode as the
gateway calls it (:func:`avn.pipeline.decode.decode_payload`, with the digest the cache key needs),
the cache key, and the decode's peak traced memory. It runs on older commits too (there the key
hashes the float pixels), so one script gives before and after. ``--reduce`` also decodes the
JPEG 2000 frame at reduced resolutions through Pillow's OpenJPEG and prints what a femoral head's
crop keeps of its pixels there. It asserts nothing.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_fragments
from pydicom.uid import JPEG2000Lossless, RLELossless

from avn.phantom.cohort import plan_cohort
from avn.phantom.render import render_radiograph
from avn.phantom.writers import write_dicom
from avn.pipeline.backend import ModelInfo
from avn.pipeline.decode import decode_payload
from avn.pipeline.pipeline import diagnosis_cache_key
from avn.pipeline.results import DiagnoseOptions, ImagePayload

MODELS = [ModelInfo(name, "1.0.0", 96, ()) for name in ("detection", "view", "side", "staging", "notes")]
HEAD_PX = (300, 400)  # a femoral head across, in a full-size radiograph
CROP_SIZES = {"quick": 96, "paper": 224}
CROP_SCALE = 0.95  # avn.pipeline.crop.SERVING_SCALE


def source_dicom(folder: Path, given: Path | None, scale: float) -> Path:
    """The DICOM to start from: ``given``, or phantom radiograph 0 rendered at ``scale`` (1: full size)."""
    if given is not None:
        return given
    spec = plan_cohort(1, 0)[1][0]
    path = folder / "phantom.dcm"
    write_dicom(path, spec, render_radiograph(spec, scale=scale), dataset_seed=0)
    return path


def variants(source: Path, folder: Path) -> dict[str, bytes]:
    """The same pixels as each file type the gateway reads (a compressed one when its encoder exists)."""
    ds = pydicom.dcmread(source)
    files = {"dicom-uncompressed": source.read_bytes()}
    for label, syntax in (("dicom-rle", RLELossless), ("dicom-jpeg2000", JPEG2000Lossless)):
        copy = pydicom.dcmread(source)
        try:
            copy.compress(syntax)
        except Exception as error:  # no encoder installed for this syntax
            print(f"{label}: skipped ({type(error).__name__}: {error})")
            continue
        buffer = io.BytesIO()
        copy.save_as(buffer)
        files[label] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(_full_scale(ds)).save(buffer, format="PNG", compress_level=1)
    files["png-16bit"] = buffer.getvalue()
    return files


def _full_scale(ds) -> np.ndarray:
    """The stored samples stretched to 16 bits, bone bright (what the phantom's PNG writer stores)."""
    maximum = 2**ds.BitsStored - 1
    samples = ds.pixel_array.astype(np.uint32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        samples = maximum - samples
    return ((samples * 65535 + maximum // 2) // maximum).astype(np.uint16)


def best_ms(function: Callable[[], object], repeats: int) -> float:
    function()  # warm: lazy imports, codec plug-ins
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def decode(data: bytes):
    """``decode_payload`` as the gateway with a cache calls it, on this commit or an older one."""
    if "digest" in inspect.signature(decode_payload).parameters:
        return decode_payload(ImagePayload(data), digest=True)
    return decode_payload(ImagePayload(data))


def key(radiograph) -> str:
    image = getattr(radiograph, "digest", None)
    return diagnosis_cache_key(image if image is not None else radiograph.pixels, MODELS, DiagnoseOptions(), 0.95)


def peak_mib(data: bytes) -> float:
    tracemalloc.start()
    try:
        decode(data)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def measure(label: str, data: bytes, repeats: int) -> dict:
    radiograph = decode(data)
    row = {
        "file": label,
        "bytes": len(data),
        "size": f"{radiograph.width}x{radiograph.height}",
        "decode_ms": round(best_ms(lambda: decode(data), repeats), 1),
        "key_ms": round(best_ms(lambda: key(radiograph), repeats), 2),
        "peak_mib": round(peak_mib(data), 1),
    }
    print(
        f"{label:20} {row['bytes'] / 2**20:6.1f} MiB {row['size']:>10}  decode {row['decode_ms']:7.1f} ms"
        f"  key {row['key_ms']:6.2f} ms  peak {row['peak_mib']:6.1f} MiB"
    )
    return row


def reduced_j2k(data: bytes, repeats: int, scale: float) -> list[dict]:
    """Decode the JPEG 2000 frame at resolution levels 0–3 through Pillow; what a head's crop keeps."""
    ds = pydicom.dcmread(io.BytesIO(data))
    fragments = generate_fragments(ds.PixelData)
    next(fragments)  # the Basic Offset Table
    codestream = next(fragments)
    rows = []
    for level in range(4):
        try:
            rows.append(_reduced_row(codestream, level, repeats, scale))
        except OSError as error:  # the codestream has fewer resolution levels
            print(f"jpeg2000 reduce={level}: not decodable ({error})")
            break
    return rows


def _reduced_row(codestream: bytes, level: int, repeats: int, scale: float) -> dict:
    def load() -> Image.Image:
        image = Image.open(io.BytesIO(codestream))
        image.reduce = level
        image.load()
        return image

    width, height = load().size
    crop = [round(px * scale * CROP_SCALE / 2**level) for px in HEAD_PX]
    ms = round(best_ms(load, repeats), 1)
    keeps = ", ".join(
        f"{name} {size} px: {'kept' if crop[0] >= size else 'upsampled'}" for name, size in CROP_SIZES.items()
    )
    print(f"jpeg2000 reduce={level}  {width}x{height}  {ms:7.1f} ms  head crop {crop[0]}–{crop[1]} px  ({keeps})")
    return {"reduce": level, "size": f"{width}x{height}", "ms": ms, "crop_px": crop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicom", type=Path, help="a full-size DICOM to start from (default: a phantom)")
    parser.add_argument("--scale", type=float, default=1.0, help="the phantom's scale (1: full size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reduce", action="store_true", help="also time JPEG 2000 reduced-resolution decoding")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = variants(source_dicom(Path(folder), args.dicom, args.scale), Path(folder))
    figures = {"decode": [measure(label, data, args.repeats) for label, data in files.items()]}
    if args.reduce and "dicom-jpeg2000" in files:
        figures["jpeg2000_reduce"] = reduced_j2k(
            files["dicom-jpeg2000"], args.repeats, 1.0 if args.dicom else args.scale
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
