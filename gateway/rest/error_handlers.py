"""Every failure answered the one way of :mod:`gateway.errors`: its mapped status, the body
``{"error": {"code", "message", "request_id"}}`` and the headers clients act on (``Retry-After``,
``avn-error-type``, ``x-request-id``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from avn.pipeline.pipeline import new_request_id
from gateway import audit
from gateway.errors import (
    DiagnosisError,
    InvalidArgument,
    Unauthenticated,
    as_gateway_error,
    error_metadata,
    status_of,
)
from gateway.rest.dependencies import REQUEST_ID_HEADER
from gateway.rest.models import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DiagnosisError)
    async def gateway_error(request: Request, error: DiagnosisError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors())
        return error_response(request, InvalidArgument(f"invalid request parameters: {problems}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return error_response(request, error)


def error_response(request: Request, error: Exception) -> JSONResponse:
    """The mapped status, the error body, and the headers clients act on (Retry-After, error type)."""
    typed = as_gateway_error(error)
    request_id = getattr(request.state, "request_id", None) or new_request_id()
    status = status_of(typed).http_status
    if typed is not error:
        logger.error("request %s failed unexpectedly", request_id, exc_info=error)
    elif status >= 500:
        logger.warning("request %s: %s: %s", request_id, type(typed).__name__, typed)
    body = ErrorResponse(error=ErrorDetail(code=type(typed).__name__, message=str(typed), request_id=request_id))
    headers = {name: value for name, value in error_metadata(typed)}
    headers[REQUEST_ID_HEADER] = request_id
    if isinstance(typed, Unauthenticated):
        headers["www-authenticate"] = 'Bearer realm="avn"'  # RFC 6750: how to authenticate
    _audit_failure(request_id, type(typed).__name__)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _audit_failure(request_id: str, error_type: str) -> None:
    # A request refused before its operation started (no key, bad parameters) still gets its id and
    # outcome in the audit line.
    record = audit.current()
    if record is not None:
        record.request_id = record.request_id or request_id
    audit.note_outcome(error_type)
