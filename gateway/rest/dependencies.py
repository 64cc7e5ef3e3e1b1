"""FastAPI dependencies of the routers: the caller's API key (:func:`authenticated`, on every
closed route), the app's pipeline, settings, metrics and case bank (held on ``app.state`` by
:func:`gateway.rest.app.create_app`), the diagnosis options of the query, and the observation of an
operation, which gives the request its id and trace span, counts and times it, and fills in its
audit line (:mod:`gateway.audit`)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from avn.pipeline.pipeline import Pipeline, accepted_request_id
from avn.pipeline.results import DiagnoseOptions
from gateway import audit
from gateway.auth import Authenticator
from gateway.cases import CaseBank
from gateway.errors import AUTHORIZATION_KEY, as_gateway_error
from gateway.errors import REQUEST_ID_KEY as REQUEST_ID_HEADER
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.tracing import request_span, trace_id_of

logger = logging.getLogger(__name__)

PROTOCOL = "rest"


# Plain async functions: FastAPI would run synchronous ones in its thread pool.
async def app_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def app_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


async def app_case_bank(request: Request) -> CaseBank:
    return request.app.state.case_bank


# Declares the scheme in the OpenAPI document; the check itself is the authenticator's.
BEARER_SCHEME = HTTPBearer(
    auto_error=False, description="An API key (`avn keys add`): `authorization: Bearer <id>.<secret>`."
)


async def authenticated(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER_SCHEME)]
) -> str:
    """The caller's key id; no or a wrong key raises :class:`~gateway.errors.Unauthenticated` (401)
    before the handler runs, so an unauthenticated client never gets its body read."""
    authenticator: Authenticator = request.app.state.authenticator
    caller = await authenticator.authenticate(request.headers.get(AUTHORIZATION_KEY))
    request.state.caller = caller
    audit.note_caller(caller)
    return caller


async def diagnose_options(
    include_overlay: bool = False,
    cam_stage: str | None = None,
    note_threshold: float | None = None,
    include_dicom: bool = False,
    operating_point: str | None = None,
) -> DiagnoseOptions:
    """The options of both diagnosis POSTs and of a case's diagnosis, from the query."""
    # note_threshold None: the pipeline applies the service's AVN_NOTE_THRESHOLD.
    return DiagnoseOptions(
        include_overlay=include_overlay,
        cam_stage=cam_stage or None,
        note_threshold=note_threshold,
        include_dicom=include_dicom,
        operating_point=operating_point or None,
    )


# An operation's observation: ``async with observe("diagnose") as request_id: ...``
Observe = Callable[[str], AbstractAsyncContextManager[str]]


async def observer(request: Request, metrics: Annotated[GatewayMetrics, Depends(app_metrics)]) -> Observe:
    # A context entered by the handler rather than a dependency with yield: a query that fails
    # validation is then neither counted nor given the client's id, as before the routers existed.
    return functools.partial(observed, request, metrics)


@asynccontextmanager
async def observed(request: Request, metrics: GatewayMetrics, operation: str) -> AsyncIterator[str]:
    """Give the request its id and its trace span (continuing the client's ``traceparent``), admit it
    (:mod:`gateway.admission`: Overloaded or ShuttingDown when it may not run), count it in flight,
    then count and time it whatever the outcome; its audit line gets the operation, the ids and the
    outcome. An untyped failure (a bug) is logged here with its traceback and answered as
    :class:`Internal`."""
    request_id = request.state.request_id = request_id_of(request)
    audit.note_request(operation, request_id)
    route = getattr(request.scope.get("route"), "path", request.url.path)  # the template: no ids from the URL
    started = time.perf_counter()
    error: str | None = None
    try:
        with (
            request_span(
                f"{request.method} {route}",
                request.headers,
                **{"http.request.method": request.method, "http.route": route, "avn.operation": operation},
            ) as span,
            metrics.answering(PROTOCOL, operation),
        ):
            trace_id = request.state.trace_id = trace_id_of(span)
            audit.note_trace(trace_id)
            try:
                with request.app.state.admission.admitted():  # the in-flight limit, shared with gRPC
                    yield request_id
            except Exception as failure:
                typed = as_gateway_error(failure)
                error = type(typed).__name__
                audit.note_outcome(error)
                if typed is not failure:
                    logger.error("request %s failed unexpectedly", request_id, exc_info=failure)
                    raise typed from failure
                raise
    finally:
        metrics.observe_request(PROTOCOL, operation, time.perf_counter() - started, error)


def request_id_of(request: Request) -> str:
    """The client's ``x-request-id`` when it is a sensible one, else a new id."""
    return accepted_request_id(request.headers.get(REQUEST_ID_HEADER, ""))


CallerDep = Annotated[str, Depends(authenticated)]
PipelineDep = Annotated[Pipeline, Depends(app_pipeline)]
SettingsDep = Annotated[Settings, Depends(app_settings)]
MetricsDep = Annotated[GatewayMetrics, Depends(app_metrics)]
CaseBankDep = Annotated[CaseBank, Depends(app_case_bank)]
OptionsDep = Annotated[DiagnoseOptions, Depends(diagnose_options)]
ObserveDep = Annotated[Observe, Depends(observer)]
