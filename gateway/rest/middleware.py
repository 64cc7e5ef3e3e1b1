"""ASGI middleware of the REST app: the audit line of every request to a closed route.

A plain ASGI middleware rather than FastAPI's ``@app.middleware("http")``: it runs in the request's
own task, so the record it opens (:func:`gateway.audit.audited`) is the one the dependencies and
handlers fill in, and it sees the status actually sent, whichever layer sent it (a handler, an
error handler, the router's 404). The line is written when the answer starts, before its first
byte leaves: a request is in the audit log by the time its client has any of the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.audit import AuditRecord, audited

PROTOCOL = "rest"
Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


class AuditMiddleware:
    """Opens an audit record per HTTP request whose path ``is_open`` does not exempt, and writes it at the end."""

    def __init__(self, app: ASGIApp, is_open: Callable[[str], bool]) -> None:
        self.app = app
        self.is_open = is_open

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or self.is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("", 0)
        # Until the operation names itself, it is the method; at the end, the method and the route's
        # template (no ids from the URL).
        with audited(PROTOCOL, scope["method"], client[0]) as record:

            async def sending(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    # The handler is done (it has its answer): the line goes out before the first byte does.
                    record.status = message["status"]
                    _complete(record, scope)
                    record.write()
                await send(message)

            try:
                await self.app(scope, receive, sending)
            except BaseException:
                # Left for the server-error handler outside this middleware: it answers 500 Internal.
                record.outcome = record.outcome or "Internal"
                raise
            finally:
                _complete(record, scope)


def _complete(record: AuditRecord, scope: Scope) -> None:
    """What the handlers did not say: the route's template as the operation, the outcome of an error status."""
    if record.operation == scope["method"]:
        record.operation = f"{scope['method']} {_route_template(scope)}"
    if record.status is None:
        record.status = 500  # nothing was sent: the server answers 500 or drops the connection
    if not record.outcome and isinstance(record.status, int) and record.status >= 400:
        record.outcome = f"HTTP{record.status}"


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "(no route)"
