"""The gRPC server's front: the API key and the audit line of every call but the health checks.

:class:`GatewayInterceptor` wraps each method handler the server finds: the call opens its audit
record (:mod:`gateway.audit`), its ``authorization: Bearer <key>`` metadata is checked
(:mod:`gateway.auth`) before the servicer sees the request — no key or a wrong one ends the call
with ``UNAUTHENTICATED`` and the error table's trailing metadata — and the record is written with
the status the call ended with. The servicer fills in the operation, the ids and the models.

Open (neither authenticated nor audited): ``grpc.health.v1.Health`` (orchestrators probe it).
Everything else is closed: ``avn.v1.Diagnosis`` and server reflection alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health

from avn.pipeline.pipeline import accepted_request_id
from gateway.audit import AuditRecord, audited
from gateway.auth import Authenticator
from gateway.errors import AUTHORIZATION_KEY, REQUEST_ID_KEY, DiagnosisError, error_metadata, status_of

PROTOCOL = "grpc"
OPEN_SERVICES = frozenset({health.SERVICE_NAME})


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """Authentication and audit around every closed method."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or service_of(details.method) in OPEN_SERVICES:
            return handler
        metadata = {key.lower(): value for key, value in (details.invocation_metadata or ())}
        return _wrapped(handler, lambda context: self._guarded(details.method, metadata, context))

    @contextlib.asynccontextmanager
    async def _guarded(
        self, method: str, metadata: Mapping[str, Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        with audited(PROTOCOL, method, _peer_address(context)) as record:
            try:
                record.caller = await self._caller(metadata, context, record)
                yield
            except grpc.aio.AbortError:  # the servicer (or the check above) ended the call with a status
                record.status = _code_name(context.code())
                raise
            except asyncio.CancelledError:  # the client went away or its deadline passed
                record.status, record.outcome = "CANCELLED", record.outcome or "Cancelled"
                raise
            except Exception:  # a bug: grpc answers UNKNOWN
                record.status, record.outcome = "UNKNOWN", record.outcome or "Internal"
                raise
            else:
                record.status = _code_name(context.code())

    async def _caller(self, metadata: Mapping[str, Any], context: grpc.aio.ServicerContext, record: AuditRecord) -> str:
        try:
            return await self.authenticator.authenticate(_text(metadata.get(AUTHORIZATION_KEY)))
        except DiagnosisError as error:
            record.request_id = accepted_request_id(_text(metadata.get(REQUEST_ID_KEY)))
            record.outcome = type(error).__name__
            await context.abort(
                status_of(error).grpc_code,
                f"{error} (request {record.request_id})",
                trailing_metadata=(*error_metadata(error), (REQUEST_ID_KEY, record.request_id)),
            )
            raise  # not reached: abort raises


def service_of(method: str) -> str:
    """``"/grpc.health.v1.Health/Check"`` → ``"grpc.health.v1.Health"``."""
    return method.lstrip("/").partition("/")[0]


Guard = Callable[[grpc.aio.ServicerContext], contextlib.AbstractAsyncContextManager[None]]


def _wrapped(handler: grpc.RpcMethodHandler, guard: Guard) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour run inside ``guard``, whatever its kind of streaming."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _unary_answer(handler.unary_unary, guard), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _unary_answer(handler.stream_unary, guard), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _streamed_answer(handler.unary_stream, guard), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        _streamed_answer(handler.stream_stream, guard), handler.request_deserializer, handler.response_serializer
    )


def _unary_answer(behaviour: Callable[..., Any], guard: Guard) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with guard(context):
            return await behaviour(request, context)

    return guarded


def _streamed_answer(behaviour: Callable[..., Any], guard: Guard) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with guard(context):
            answer = behaviour(request, context)
            if inspect.isawaitable(answer):  # a behaviour that writes through context.write
                await answer
                return
            async for message in answer:
                yield message

    return guarded


def _code_name(code: Any) -> str:
    if code is None:
        return grpc.StatusCode.OK.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((status.name for status in grpc.StatusCode if status.value[0] == code), str(code))


def _peer_address(context: grpc.aio.ServicerContext) -> str:
    # "ipv4:127.0.0.1:53210" → "127.0.0.1"; the port says nothing about who called.
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return rest.rpartition(":")[0] if kind == "ipv4" else peer


def _text(value: Any) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
