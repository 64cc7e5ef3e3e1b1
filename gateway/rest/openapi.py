"""What the OpenAPI document says beyond the response models: error responses, the raw and
multipart request bodies (read by hand, so FastAPI cannot infer them) and the display headers."""

from __future__ import annotations

from typing import Any

from fastapi import Query

from gateway.rest.models import ErrorResponse

MULTIPART = "multipart/form-data"
RAW_MEDIA_TYPES = ("application/dicom", "image/png", "image/jpeg", "application/octet-stream")
# Headers of a display rendition: the window it was drawn with (the web app's sliders follow it)
# and the radiograph's size in pixels (the coordinates of boxes).
WINDOW_CENTER_HEADER = "avn-window-center"
WINDOW_WIDTH_HEADER = "avn-window-width"
IMAGE_WIDTH_HEADER = "avn-image-width"
IMAGE_HEIGHT_HEADER = "avn-image-height"
SOURCE_FORMAT_HEADER = "avn-source-format"

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Unreadable image or invalid option"),
        (401, "No API key, or not a valid one"),
        (408, "The request body did not arrive within the body deadline"),
        (413, "Payload over the limit"),
        (422, "No femoral head found"),
        (429, "Too many requests in flight; retry after Retry-After seconds"),
        (500, "Internal error"),
        (503, "A model is unavailable or the gateway is stopping; retry after Retry-After seconds"),
        (504, "Deadline exceeded"),
    )
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
DIAGNOSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            'multipart/related; type="application/dicom"': _BINARY,
        },
        "description": 'The diagnosis as JSON; with Accept: multipart/related; type="application/dicom" the '
        "TID 1500 SR and the annotated Secondary Capture as DICOM parts (DICOM input only); docs/integration.md.",
    },
    **ERROR_RESPONSES,
}
DIAGNOSE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{media_type: _BINARY for media_type in RAW_MEDIA_TYPES},
            MULTIPART: {"schema": {"type": "object", "properties": {"file": _BINARY["schema"]}, "required": ["file"]}},
        },
    }
}
STUDY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": _BINARY["schema"]}},
                    "required": ["files"],
                }
            }
        },
    }
}
DISPLAY_PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}},
        "description": f"8-bit grey PNG; headers {WINDOW_CENTER_HEADER} and {WINDOW_WIDTH_HEADER} give the window used "
        f"(fractions of the decoded range), {IMAGE_WIDTH_HEADER} / {IMAGE_HEIGHT_HEADER} the size in pixels.",
    },
    **ERROR_RESPONSES,
}
WINDOW_CENTER_QUERY = Query(
    None, ge=0, le=1, description="Window centre, fraction of the decoded range; default automatic."
)
WINDOW_WIDTH_QUERY = Query(
    None, gt=0, le=2, description="Window width, fraction of the decoded range; default automatic."
)
