"""Reading radiographs from request bodies: a raw file, or multipart file parts, always under the
payload limit (413 while the body streams in, before anything is decoded) and within the body
deadline (408: a slow or stalled upload does not hold its slot for ever)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from avn.pipeline.results import ImagePayload
from gateway.errors import InvalidArgument, InvalidImage, PayloadTooLarge, RequestTimeout
from gateway.rest.openapi import MULTIPART

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # part headers and boundaries around the file(s)


async def single_payload(request: Request, limit: int, timeout_s: float) -> ImagePayload:
    """The radiograph of ``POST /v1/diagnose``: the raw body, or the multipart ``file`` part."""
    content_type = request.headers.get("content-type", "")
    if _is_multipart(content_type):
        files = await _uploaded_files(request, limit + MULTIPART_OVERHEAD_BYTES, limit, timeout_s)
        if len(files) != 1:
            raise InvalidArgument(
                f"send exactly one file part (named 'file'), got {len(files)}; use /v1/studies for several"
            )
        return files[0]
    body = await _limited_body(request, limit, timeout_s)
    if not body:
        raise InvalidImage("empty image: the request body carried no bytes")
    return ImagePayload(body, content_type)


async def study_payloads(request: Request, limit: int, file_limit: int, timeout_s: float) -> list[ImagePayload]:
    """The radiographs of ``POST /v1/studies``: one multipart file part each."""
    if not _is_multipart(request.headers.get("content-type", "")):
        raise InvalidArgument("a study is sent as multipart/form-data with one file part per radiograph")
    return await _uploaded_files(request, limit, file_limit, timeout_s)


def _is_multipart(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == MULTIPART


async def _limited_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``limit`` (declared or streamed),
    and with 408 when all of it has not arrived within ``timeout_s`` (a total, not an idle time:
    trickling a byte a second must not hold the request's slot for ever)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s ({size} bytes had); send it faster or whole"
        ) from None
    return b"".join(chunks)


async def _uploaded_files(request: Request, limit: int, file_limit: int, timeout_s: float) -> list[ImagePayload]:
    """Every file part, in order. The body is read under the limit first, then parsed from memory:
    the multipart parser itself would accept a chunked upload of any size."""
    body = await _limited_body(request, limit, timeout_s)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except Exception as error:  # starlette raises its own parse errors; all mean "not a valid form"
        raise InvalidArgument(f"malformed multipart body: {error}") from error
    payloads = []
    try:
        for name, value in form.multi_items():
            if not isinstance(value, UploadFile):
                continue  # options travel as query parameters; stray text fields are ignored
            data = await value.read()
            if len(data) > file_limit:
                # Named by its form field, not its file name: file names often carry a patient's name.
                raise PayloadTooLarge(
                    f"file part {name!r} of {len(data)} bytes is over the limit of {file_limit} bytes"
                )
            payloads.append(ImagePayload(data, _part_media_type(value)))
    finally:
        await form.close()
    if not payloads:
        raise InvalidImage("the multipart body holds no file part")
    return payloads


def _part_media_type(upload: UploadFile) -> str:
    # Browsers and curl label unknown files application/octet-stream: the pipeline then sniffs the bytes.
    return upload.content_type or ""
