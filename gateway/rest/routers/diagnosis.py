"""``POST /v1/diagnose`` (one radiograph) and ``POST /v1/studies`` (several radiographs of one subject).

``/v1/diagnose`` answers in the representation the ``Accept`` header asks for
(:mod:`gateway.rest.representations`): JSON, a FHIR R4 Bundle, or the DICOM outputs as multipart/related."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request, Response

from avn.integration.fhir import fhir_bundle
from avn.pipeline.results import DiagnoseRequest, StudyRequest, to_json_dict
from gateway import audit
from gateway.rest.bodies import MULTIPART_OVERHEAD_BYTES, single_payload, study_payloads
from gateway.rest.dependencies import MetricsDep, ObserveDep, OptionsDep, PipelineDep, SettingsDep
from gateway.rest.models import DiagnosisResponse, StudyResponse
from gateway.rest.openapi import DIAGNOSE_BODY, DIAGNOSE_RESPONSES, ERROR_RESPONSES, STUDY_BODY
from gateway.rest.representations import Representation, fhir_response, multipart_related, wanted_representation

router = APIRouter()


@router.post(
    "/v1/diagnose",
    response_model=DiagnosisResponse,
    responses=DIAGNOSE_RESPONSES,
    openapi_extra=DIAGNOSE_BODY,
    summary="Diagnose one radiograph",
)
async def diagnose(
    request: Request,
    options: OptionsDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    observe: ObserveDep,
) -> DiagnosisResponse | Response:
    representation = wanted_representation(request.headers.get("accept", ""))
    if representation is Representation.DICOM:
        options = replace(options, include_dicom=True)
    async with observe("diagnose") as request_id:
        payload = await single_payload(request, settings.max_payload_bytes, settings.body_timeout_s)
        result = await pipeline.diagnose(
            DiagnoseRequest(payload, options), request_id=request_id, timeout_s=settings.deadline_s
        )
        metrics.observe_diagnosis(result)
        audit.note_models(result.models)
        if representation is Representation.DICOM:
            return multipart_related([result.dicom_sr, result.dicom_annotated])
        if representation is Representation.FHIR:
            return fhir_response(fhir_bundle(result))
        return DiagnosisResponse.model_validate(to_json_dict(result))


@router.post(
    "/v1/studies",
    response_model=StudyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=STUDY_BODY,
    summary="Diagnose several radiographs of one subject",
)
async def studies(
    request: Request,
    options: OptionsDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    observe: ObserveDep,
) -> StudyResponse:
    async with observe("study") as request_id:
        # The pipeline checks the study's total again, on both protocols; here it bounds the body read.
        limit = pipeline.max_study_bytes + MULTIPART_OVERHEAD_BYTES
        payloads = await study_payloads(request, limit, settings.max_payload_bytes, settings.body_timeout_s)
        result = await pipeline.diagnose_study(
            StudyRequest(tuple(payloads), options), request_id=request_id, timeout_s=settings.deadline_s
        )
        for radiograph in result.radiographs:
            metrics.observe_diagnosis(radiograph.result)
            audit.note_models(radiograph.result.models)
        return StudyResponse.model_validate(to_json_dict(result))
