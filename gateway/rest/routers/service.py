"""The service's own state: ``GET /healthz`` (alive) and ``/readyz`` (every model answers), open to
anyone (:data:`health_router`); ``GET /v1/models``, ``/v1/whoami`` (the caller's key id) and
``/metrics`` (Prometheus text), behind the API key like the rest (:data:`router`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from avn.pipeline.results import to_json_dict
from gateway import audit
from gateway.rest.dependencies import CallerDep, MetricsDep, ObserveDep, PipelineDep
from gateway.rest.models import HealthResponse, ModelDescription, ReadinessResponse, WhoAmIResponse
from gateway.rest.openapi import ERROR_RESPONSES

NOT_READY_RETRY_S = 5

router = APIRouter()
health_router = APIRouter()  # included without authentication: load balancers and orchestrators probe it


@router.get("/v1/models", response_model=list[ModelDescription], responses=ERROR_RESPONSES, summary="The models")
async def models(pipeline: PipelineDep, observe: ObserveDep) -> list[ModelDescription]:
    async with observe("models"):
        infos = await pipeline.models()
        audit.note_models(infos)
        return [ModelDescription.model_validate(to_json_dict(info)) for info in infos]


@router.get("/v1/whoami", response_model=WhoAmIResponse, summary="The caller's API key id")
async def whoami(caller: CallerDep, request: Request, observe: ObserveDep) -> WhoAmIResponse:
    async with observe("whoami"):
        return WhoAmIResponse(caller=caller, authentication=request.app.state.authenticator.mode)


@health_router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@health_router.get(
    "/readyz",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "A model does not answer, or the gateway is stopping"}},
    summary="Readiness: every model is loaded and answers, and the gateway is not stopping",
)
async def readyz(pipeline: PipelineDep, request: Request) -> Response:
    # Draining (SIGTERM): not ready at once, so that load balancers send no more work here.
    if not request.app.state.admission.draining and await pipeline.ready():
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False}, status_code=503, headers={"Retry-After": str(NOT_READY_RETRY_S)})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)
