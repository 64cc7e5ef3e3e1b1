"""The audit log: one JSON line per request, on its own logger (``avn.audit``).

Each line says who (the API key's id, never the key), what (protocol and operation), when (UTC,
when the request arrived), how it ended (``ok`` or the error type, and the HTTP status or gRPC
code), how long it took, the ids that find it again (request id, trace id) and the versions of the
models that answered. It is the gateway's one line per request: failures are logged besides it only
when they need a traceback (bugs) or an operator's attention (5xx).

No PHI, by construction: the fields are all set by the gateway from what it knows itself — never
a header value other than the client's request id (which :func:`avn.pipeline.pipeline.
accepted_request_id` bounds), never a file name, a query string, an error message or a pixel. The
route is its template (``/v1/cases/{case_id}/truth``), not the URL.

The outermost layer of each protocol opens the record (:func:`audited`: the REST middleware, the
gRPC interceptor) and writes it when the request ends; the layers inside fill it in through the
context variable (:func:`current`): the authentication dependency or interceptor, the operation's
observation, the handler that got the models' answer. Requests of open routes (health checks, the
web app's static files) are not audited.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

AUDIT_LOGGER_NAME = "avn.audit"
audit_logger = logging.getLogger(AUDIT_LOGGER_NAME)
OK = "ok"


@dataclass
class AuditRecord:
    """One request's line, filled in while it runs."""

    protocol: str
    operation: str
    client: str = ""
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    caller: str | None = None
    request_id: str = ""
    trace_id: str = ""
    outcome: str = ""
    status: int | str | None = None
    models: dict[str, str] = field(default_factory=dict)
    _started: float = field(default_factory=perf_counter, repr=False)
    _written: bool = field(default=False, repr=False)

    def write(self) -> None:
        """Log the line, once (a transport may write it before the answer's last byte leaves)."""
        if not self._written:
            self._written = True
            audit_logger.info("%s", self.as_line())

    def as_line(self) -> str:
        fields = {
            "time": self.time,
            "protocol": self.protocol,
            "operation": self.operation,
            "caller": self.caller,
            "client": self.client,
            "request_id": self.request_id or None,
            "trace_id": self.trace_id or None,
            "outcome": self.outcome or OK,
            "status": self.status,
            "duration_ms": round((perf_counter() - self._started) * 1000, 1),
            "models": self.models or None,
        }
        return json.dumps(fields, separators=(",", ":"))


_CURRENT: contextvars.ContextVar[AuditRecord | None] = contextvars.ContextVar("avn_audit_record", default=None)


@contextlib.contextmanager
def audited(protocol: str, operation: str, client: str = "") -> Iterator[AuditRecord]:
    """The record of the request handled in the block, written when the block ends (even by an exception)."""
    record = AuditRecord(protocol, operation, client)
    token = _CURRENT.set(record)
    try:
        yield record
    finally:
        _CURRENT.reset(token)
        record.write()


def current() -> AuditRecord | None:
    """The record of the request being handled, if it is audited."""
    return _CURRENT.get()


def note_caller(caller: str) -> None:
    if (record := current()) is not None:
        record.caller = caller


def note_request(operation: str, request_id: str) -> None:
    if (record := current()) is not None:
        record.operation, record.request_id = operation, request_id


def note_trace(trace_id: str) -> None:
    if (record := current()) is not None:
        record.trace_id = trace_id


def note_outcome(error_type: str) -> None:
    """How the request ended, when not ``ok``: the error type (``Unauthenticated``, ``InvalidImage``, …)."""
    if (record := current()) is not None and not record.outcome:
        record.outcome = error_type


def note_models(models: Iterable[Any]) -> None:
    """The versions of the models that answered (``ModelVersion`` or ``ModelInfo`` items)."""
    if (record := current()) is not None:
        record.models.update({str(model.name): str(model.version) for model in models})


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a line is written (as logging's last-resort handler
    does for stderr), not to the stream that was there when it was made."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_audit_log(path: Path | None) -> None:
    """Send the audit lines, bare JSON, to ``path`` (appended; reopened when rotated away) or to stdout,
    and not through the root logger's format. Called by the serving process's entry points only."""
    handler: logging.Handler
    if path is None:
        handler = _StdoutHandler()
    else:
        from logging.handlers import WatchedFileHandler  # noqa: PLC0415

        handler = WatchedFileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit_logger.handlers[:] = [handler]
    audit_logger.setLevel(logging.INFO)
    audit_logger.propagate = False
