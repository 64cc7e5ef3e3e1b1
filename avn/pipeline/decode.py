"""Decode: the bytes of one request → a :class:`~avn.dataset.images.Radiograph`, or a clear refusal.

The media type a client declares is checked against what the bytes start like; the pixels come from
:func:`avn.dataset.images.read_radiograph`, the project's one decoder (DICOM through pydicom with
the pylibjpeg plug-ins, Modality LUT applied, MONOCHROME1 inverted; PNG and JPEG through Pillow).
DICOM is recognised by its Part 10 preamble, or without one by a first data element of group 0002
or 0008 (older archives). Two limits bound the memory of one decode: ``max_image_bytes`` on what was
sent, and ``max_decode_bytes`` on what decoding it would produce, checked from the header before any
pixel is decoded or any Deflated data set inflated. Every failure is an
:class:`~avn.pipeline.errors.InvalidImage` (400) or :class:`~avn.pipeline.errors.PayloadTooLarge`
(413, either limit) naming the reason. A DICOM header whose body part cannot show a hip is refused
before any model runs (:func:`check_body_part`).
"""

from __future__ import annotations

from avn.dataset.images import (
    DEFAULT_MAX_DECODE_BYTES,
    ImageReadError,
    ImageTooLargeError,
    Radiograph,
    is_dicom_bytes,
    read_radiograph,
)
from avn.pipeline.errors import InvalidArgument, InvalidImage, NoFemoralHead, PayloadTooLarge
from avn.pipeline.results import ImagePayload

# Under the gRPC message limit (64 MiB) so that the gateway, not the transport, names the problem.
DEFAULT_MAX_IMAGE_BYTES = 48 * 1024 * 1024
MIN_IMAGE_SIDE = 32  # smaller than any radiograph; the detector needs some pixels to look at
MEDIA_TYPE_ALIASES = {
    "application/dicom": "application/dicom",
    "image/dicom": "application/dicom",
    "image/png": "image/png",
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
}
SNIFF_MEDIA_TYPES = ("", "application/octet-stream")  # "recognise it from the bytes"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def decode_payload(
    payload: ImagePayload,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    digest: bool = False,
) -> Radiograph:
    """The radiograph in a payload, or an :class:`InvalidImage` / :class:`PayloadTooLarge` saying why not.

    ``max_image_bytes`` bounds the bytes sent, ``max_decode_bytes`` the decoded samples (frames ×
    samples × rows × columns × bytes per sample, read from the header before decoding); ``digest``
    asks for the samples' digest, the result cache's key for the pixels.
    """
    data = payload.data
    if not data:
        raise InvalidImage("empty image: the request carried no bytes")
    if len(data) > max_image_bytes:
        raise PayloadTooLarge(f"image of {len(data)} bytes is over the limit of {max_image_bytes} bytes")
    declared = declared_media_type(payload.media_type)
    found = sniff_media_type(data)
    if found is None:
        raise InvalidImage(
            # Enough to tell a format by its magic number (GIF8, %PDF), too short to carry identifying text.
            f"not a PNG, JPEG or DICOM file (starts with bytes {data[:4].hex(' ')}, {len(data)} bytes); "
            "DICOM must start with the Part 10 preamble and 'DICM', or with a data element of group 0002 or 0008"
        )
    if declared is not None and declared != found:
        raise InvalidImage(f"media type {declared} was declared but the bytes are {found}")
    try:
        radiograph = read_radiograph(data, max_decode_bytes, digest=digest)
    except ImageTooLargeError as error:
        raise PayloadTooLarge(_client_message(error)) from error
    except ImageReadError as error:
        raise InvalidImage(_client_message(error)) from error
    if min(radiograph.width, radiograph.height) < MIN_IMAGE_SIDE:
        raise InvalidImage(
            f"image of {radiograph.width}x{radiograph.height} pixels is too small for a radiograph "
            f"(at least {MIN_IMAGE_SIDE} pixels per side)"
        )
    return radiograph


def _client_message(error: ImageReadError) -> str:
    return str(error).removeprefix("<payload>: ")


def declared_media_type(media_type: str) -> str | None:
    """The canonical media type a client declared, None for "recognise it"; unknown types rejected."""
    essence = media_type.split(";", 1)[0].strip().lower()
    if essence in SNIFF_MEDIA_TYPES:
        return None
    if essence not in MEDIA_TYPE_ALIASES:
        raise InvalidArgument(
            f"unsupported media type {media_type!r};"
            " send application/dicom, image/png or image/jpeg (or leave it empty)"
        )
    return MEDIA_TYPE_ALIASES[essence]


def sniff_media_type(data: bytes) -> str | None:
    """The media type the bytes start like, or None."""
    if is_dicom_bytes(data):
        return "application/dicom"
    if data.startswith(PNG_MAGIC):
        return "image/png"
    if data.startswith(JPEG_MAGIC):
        return "image/jpeg"
    return None


# DICOM BodyPartExamined values (PS3.16 CID 4031) of radiographs that cannot show a femoral head.
# Ambiguous ones (EXTREMITY, LEG, ABDOMEN, WHOLEBODY, ...) go to the detector like any other.
NON_HIP_BODY_PARTS = frozenset(
    {
        "CHEST",
        "THORAX",
        "LUNG",
        "HEART",
        "BREAST",
        "SKULL",
        "HEAD",
        "BRAIN",
        "FACE",
        "JAW",
        "TMJ",
        "NECK",
        "CSPINE",
        "TSPINE",
        "SHOULDER",
        "CLAVICLE",
        "ARM",
        "HUMERUS",
        "ELBOW",
        "FOREARM",
        "WRIST",
        "HAND",
        "FINGER",
        "KNEE",
        "PATELLA",
        "TIBIA",
        "FIBULA",
        "ANKLE",
        "FOOT",
        "TOE",
        "HEEL",
    }
)


def check_body_part(body_part: str | None) -> None:
    """A DICOM file whose header names a body part without a hip gets a clear refusal, not a stage."""
    if body_part in NON_HIP_BODY_PARTS:
        raise NoFemoralHead(f"not a pelvic radiograph: the DICOM header says the body part examined is {body_part}")
