"""The service's own state: ``GET /v1/models``, ``/healthz`` (alive), ``/readyz`` (every model
answers) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from avn.pipeline.results import to_json_dict
from gateway.rest.dependencies import MetricsDep, ObserveDep, PipelineDep
from gateway.rest.models import HealthResponse, ModelDescription, ReadinessResponse
from gateway.rest.openapi import ERROR_RESPONSES

NOT_READY_RETRY_S = 5

router = APIRouter()


@router.get("/v1/models", response_model=list[ModelDescription], responses=ERROR_RESPONSES, summary="The models")
async def models(pipeline: PipelineDep, observe: ObserveDep) -> list[ModelDescription]:
    async with observe("models"):
        infos = await pipeline.models()
        return [ModelDescription.model_validate(to_json_dict(info)) for info in infos]


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "Not every model is loaded and answering"}},
    summary="Readiness: every model is loaded and answers",
)
async def readyz(pipeline: PipelineDep) -> Response:
    if await pipeline.ready():
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False}, status_code=503, headers={"Retry-After": str(NOT_READY_RETRY_S)})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)
