"""The typed errors of a diagnosis: what a client can be told went wrong, in words it can act on.

Every step of :mod:`avn.pipeline` raises these and nothing else on bad input or a failing model;
``str(error)`` is the client message and carries no patient data. The transports map them once to
gRPC status codes and HTTP statuses (:mod:`gateway.errors`); anything else that escapes the
pipeline is a bug and is reported as :class:`Internal`.
"""

from __future__ import annotations


class DiagnosisError(Exception):
    """Base of every error the gateway reports to a client; ``str(error)`` is the client message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(DiagnosisError):
    """The payload is not a readable radiograph (empty, garbage, truncated, no pixel data, wrong type)."""


class InvalidArgument(DiagnosisError):
    """A request field other than the image is invalid (unknown cam stage, threshold out of range…)."""


class PayloadTooLarge(DiagnosisError):
    """Over one of the service's limits: the bytes of an image or a study, the number of radiographs
    in a study, or the memory decoding an image would take (its decode budget)."""


class NoFemoralHead(DiagnosisError):
    """A readable radiograph on which the detector found no femoral head."""


class ModelUnavailable(DiagnosisError):
    """A model is not loaded or its server does not answer; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = float(retry_after_s)


class DeadlineExceeded(DiagnosisError):
    """The request did not finish within its deadline."""


class Internal(DiagnosisError):
    """An unexpected failure inside the service (a bug); the message carries no internals."""
