"""What ``avn bench`` sends: a data set's full-size DICOMs in the transfer syntaxes hospitals send.

Modalities and PACS send radiographs uncompressed (Explicit VR Little Endian) or losslessly
compressed: JPEG 2000 lossless, JPEG-LS lossless or RLE lossless. Decoding them costs very
different times, so the bench re-encodes a few of the data set's radiographs (``sources``) into
each syntax with pydicom's own encoders (:meth:`pydicom.dataset.Dataset.compress`; the plug-ins
that pydicom finds installed: pylibjpeg-openjpeg for JPEG 2000, pyjpegls for JPEG-LS, pydicom's
native RLE encoder) and sends them round-robin: request ``i`` carries syntax ``i mod S``. Every
re-encoding is lossless, so each syntax carries the same pixels.

A syntax whose encoder is missing is left out and :func:`missing_encoders` says why (its missing
package), so the bench prints it instead of failing. ``as-stored`` sends the files unchanged (a
PNG data set, or the old behaviour).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless

AS_STORED = "as-stored"
EXPLICIT_LE = "explicit-le"
SYNTAXES: dict[str, UID | None] = {
    EXPLICIT_LE: None,  # written by decompressing (pydicom's decompress gives Explicit VR Little Endian)
    "jpeg2000-lossless": JPEG2000Lossless,
    "jpeg-ls-lossless": JPEGLSLossless,
    "rle-lossless": RLELossless,
}
DEFAULT_SYNTAXES = tuple(SYNTAXES)
DEFAULT_SOURCES = 4


class PayloadError(RuntimeError):
    """The payloads cannot be made (no radiographs, a syntax that needs DICOM, an unknown syntax)."""


@dataclass(frozen=True)
class Payload:
    """One file to send: its bytes, the transfer syntax it is in, and the data-set file it came from."""

    syntax: str
    source: str
    data: bytes = b""


def data_set_files(data: Path) -> list[Path]:
    """The radiograph files of a data set folder, in the data set's order."""
    from avn.dataset.format import load_dataset  # noqa: PLC0415

    if not (data / "annotations.json").exists():
        raise PayloadError(f"{data} is no data set (no annotations.json); build one with `avn phantom` or `make run`")
    files = [data / image.file_name for image in load_dataset(data).images]
    if not files:
        raise PayloadError(f"{data} holds no radiographs")
    return files


def missing_encoders(syntaxes: Sequence[str]) -> dict[str, str]:
    """Per syntax that cannot be encoded here: the reason (pydicom's list of missing plug-ins)."""
    from pydicom.pixels import get_encoder  # noqa: PLC0415

    unknown = [name for name in syntaxes if name not in SYNTAXES and name != AS_STORED]
    if unknown:
        raise PayloadError(f"unknown transfer syntaxes {unknown}; choose from {AS_STORED}, {', '.join(SYNTAXES)}")
    missing = {}
    for name in syntaxes:
        uid = SYNTAXES.get(name)
        if uid is not None and not get_encoder(uid).is_available:
            missing[name] = "no encoder: " + "; ".join(get_encoder(uid).missing_dependencies)
    return missing


def transcode(data: bytes, syntax: str) -> bytes:
    """The DICOM file ``data`` re-encoded, losslessly, in ``syntax`` (a key of :data:`SYNTAXES`)."""
    import pydicom  # noqa: PLC0415

    dataset = pydicom.dcmread(io.BytesIO(data))
    uid = SYNTAXES[syntax]
    if uid is None:
        if dataset.file_meta.TransferSyntaxUID.is_compressed:
            dataset.decompress(generate_instance_uid=False)
        else:
            dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    elif dataset.file_meta.TransferSyntaxUID != uid:
        if dataset.file_meta.TransferSyntaxUID.is_compressed:
            dataset.decompress(generate_instance_uid=False)
        dataset.compress(uid, generate_instance_uid=False)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def bench_payloads(
    data: Path, count: int, syntaxes: Sequence[str] = DEFAULT_SYNTAXES, sources: int = DEFAULT_SOURCES
) -> list[Payload]:
    """``count`` payloads. Syntaxes round-robin: request ``i`` is source ``(i // S) mod sources`` in
    syntax ``i mod S``, each (source, syntax) encoded once and shared. ``[as-stored]``: the data
    set's files unchanged, repeated as needed (``sources`` does not apply)."""
    syntaxes = list(syntaxes)
    if not syntaxes:
        raise PayloadError("no transfer syntax to send")
    if AS_STORED in syntaxes:
        if len(syntaxes) > 1:
            raise PayloadError(f"{AS_STORED} sends the files unchanged and cannot be mixed with other syntaxes")
        files = data_set_files(data)
        stored = {file: file.read_bytes() for file in files[:count]}
        return [Payload(AS_STORED, files[i % len(files)].name, stored[files[i % len(files)]]) for i in range(count)]
    files = data_set_files(data)[: max(1, sources)]
    encoded = {(file, syntax): _encoded(file, syntax) for file in files for syntax in syntaxes}
    plan = [(files[(i // len(syntaxes)) % len(files)], syntaxes[i % len(syntaxes)]) for i in range(count)]
    return [Payload(syntax, file.name, encoded[(file, syntax)]) for file, syntax in plan]


def _encoded(file: Path, syntax: str) -> bytes:
    data = file.read_bytes()
    if not _is_dicom(data):
        raise PayloadError(f"{file.name} is not DICOM: only {AS_STORED} can send it (--syntaxes {AS_STORED})")
    return transcode(data, syntax)


def _is_dicom(data: bytes) -> bool:
    from avn.dataset.images import is_dicom_bytes  # noqa: PLC0415

    return is_dicom_bytes(data)
