"""The ONE table that maps the typed errors — the pipeline's (:mod:`avn.pipeline.errors`) and the
gateway's own (authentication, load, shutdown, slow uploads) — to gRPC status codes and HTTP statuses.

The gRPC servicer and the REST app both translate through :func:`status_of`, so a failure means the
same thing on either protocol. Anything else that escapes the pipeline is a bug:
:func:`as_gateway_error` turns it into :class:`Internal` without leaking internals to the client.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from avn.pipeline.errors import (
    DeadlineExceeded,
    DiagnosisError,
    Internal,
    InvalidArgument,
    InvalidImage,
    ModelUnavailable,
    NoFemoralHead,
    PayloadTooLarge,
)


class Unauthenticated(DiagnosisError):
    """No API key, or one that is not (or no longer) in the keys file."""


class Overloaded(DiagnosisError):
    """The gateway already has as many requests in flight as it may; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = float(retry_after_s)


class ShuttingDown(DiagnosisError):
    """The gateway is draining before it stops: another replica (or this one, restarted) will answer."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = float(retry_after_s)


class RequestTimeout(DiagnosisError):
    """The request body did not arrive within the body deadline (a slow or stalled upload)."""


@dataclass(frozen=True)
class ErrorStatus:
    grpc_code: grpc.StatusCode
    http_status: int


# The one mapping. REST and gRPC both read it; a new error class needs a row here.
ERROR_STATUS: dict[type[DiagnosisError], ErrorStatus] = {
    InvalidImage: ErrorStatus(grpc.StatusCode.INVALID_ARGUMENT, 400),
    InvalidArgument: ErrorStatus(grpc.StatusCode.INVALID_ARGUMENT, 400),
    PayloadTooLarge: ErrorStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    # A well-formed image the service cannot diagnose: not the client's syntax (400), not our fault
    # (5xx); retrying the same image will not help.
    NoFemoralHead: ErrorStatus(grpc.StatusCode.FAILED_PRECONDITION, 422),
    ModelUnavailable: ErrorStatus(grpc.StatusCode.UNAVAILABLE, 503),
    DeadlineExceeded: ErrorStatus(grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    Internal: ErrorStatus(grpc.StatusCode.INTERNAL, 500),
    Unauthenticated: ErrorStatus(grpc.StatusCode.UNAUTHENTICATED, 401),
    # Back-pressure: the same code as a size limit on gRPC (clients back off on it), 429 on HTTP.
    Overloaded: ErrorStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ShuttingDown: ErrorStatus(grpc.StatusCode.UNAVAILABLE, 503),
    # Only REST reads a body by hand; gRPC's transport bounds its own messages.
    RequestTimeout: ErrorStatus(grpc.StatusCode.DEADLINE_EXCEEDED, 408),
}

# 5xx rows that are no failure of the service: a replica draining before it stops refuses new work
# on purpose, at every rollout. The error-rate alert and the dashboard count the other 5xx rows.
PLANNED_UNAVAILABILITY: frozenset[type[DiagnosisError]] = frozenset({ShuttingDown})


def service_failures() -> list[str]:
    """The error types that count as the service failing (alerts, dashboards): 5xx, unplanned."""
    rows = ERROR_STATUS.items()
    return sorted(
        cls.__name__ for cls, status in rows if status.http_status >= 500 and cls not in PLANNED_UNAVAILABILITY
    )


# Metadata (gRPC) / header (HTTP) names, the same on both transports: the request id, and the
# machine-readable parts of an error.
REQUEST_ID_KEY = "x-request-id"
ERROR_TYPE_KEY = "avn-error-type"  # the class name, e.g. "InvalidImage"
RETRY_AFTER_KEY = "retry-after"  # whole seconds (errors with a retry_after_s), as HTTP's Retry-After
AUTHORIZATION_KEY = "authorization"  # "Bearer <API key>": the HTTP header and the gRPC metadata


def status_of(error: DiagnosisError) -> ErrorStatus:
    """The gRPC code and HTTP status of ``error`` (subclasses inherit their parent's row)."""
    for cls in type(error).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return ERROR_STATUS[Internal]


def as_gateway_error(error: BaseException) -> DiagnosisError:
    """``error`` itself when typed, else an :class:`Internal` that hides the details."""
    if isinstance(error, DiagnosisError):
        return error
    return Internal("internal error in the diagnosis gateway; the request id identifies it in the logs")


def error_metadata(error: DiagnosisError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata (gRPC) or headers (HTTP) that let clients act on ``error`` without parsing text."""
    pairs = [(ERROR_TYPE_KEY, type(error).__name__)]
    retry_after_s = getattr(error, "retry_after_s", None)  # ModelUnavailable, Overloaded, ShuttingDown
    if retry_after_s is not None:
        pairs.append((RETRY_AFTER_KEY, str(max(1, round(retry_after_s)))))
    return tuple(pairs)
