"""What the web app needs beyond the diagnosis API: display renditions of radiographs under a
window/level, the self-study case bank (:mod:`gateway.cases`), and the page itself (``web/``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from avn.dataset.images import Radiograph
from avn.pipeline.decode import decode_payload
from avn.pipeline.pipeline import Pipeline, deadline
from avn.pipeline.results import DiagnoseRequest, ImagePayload, to_json_dict
from gateway import audit
from gateway.display import windowed_png
from gateway.rest.bodies import single_payload
from gateway.rest.dependencies import CaseBankDep, MetricsDep, ObserveDep, OptionsDep, PipelineDep, SettingsDep
from gateway.rest.models import (
    BoxResult,
    CaseBankResponse,
    CaseHeadTruth,
    CaseSummary,
    CaseTruthResponse,
    DiagnosisResponse,
)
from gateway.rest.openapi import (
    DIAGNOSE_BODY,
    DISPLAY_PNG_RESPONSE,
    ERROR_RESPONSES,
    IMAGE_HEIGHT_HEADER,
    IMAGE_WIDTH_HEADER,
    SOURCE_FORMAT_HEADER,
    WINDOW_CENTER_HEADER,
    WINDOW_CENTER_QUERY,
    WINDOW_WIDTH_HEADER,
    WINDOW_WIDTH_QUERY,
)

logger = logging.getLogger(__name__)

# The web app: static files from the top-level web/ folder, served under WEB_PATH ("/" redirects).
WEB_DIR = Path(__file__).resolve().parents[3] / "web"
WEB_PATH = "/app"

router = APIRouter()


@router.post(
    "/v1/render",
    response_class=Response,
    responses=DISPLAY_PNG_RESPONSE,
    openapi_extra=DIAGNOSE_BODY,
    summary="Display rendition of one radiograph under a window/level",
)
async def render(
    request: Request,
    pipeline: PipelineDep,
    settings: SettingsDep,
    observe: ObserveDep,
    window_center: float | None = WINDOW_CENTER_QUERY,
    window_width: float | None = WINDOW_WIDTH_QUERY,
) -> Response:
    async with observe("render"):
        payload = await single_payload(request, settings.max_payload_bytes, settings.body_timeout_s)
        async with deadline(settings.deadline_s):  # the body has its own deadline; decoding and drawing this one
            radiograph = await pipeline.run_image_work(
                decode_payload, payload, pipeline.max_image_bytes, pipeline.max_decode_bytes
            )
            return await _display_response(pipeline, radiograph, window_center, window_width)


@router.get("/v1/cases", response_model=CaseBankResponse, summary="The self-study case bank")
async def cases(case_bank: CaseBankDep, observe: ObserveDep) -> CaseBankResponse:
    async with observe("cases"):
        return CaseBankResponse(
            available=case_bank.available,
            source=case_bank.folder.name if case_bank.folder is not None else "",  # never the server's path
            split=case_bank.split,
            message=case_bank.problem,
            cases=[CaseSummary(id=c.id, name=c.file_name, sides=list(c.sides)) for c in case_bank.cases],
        )


@router.get(
    "/v1/cases/{case_id}/image",
    response_class=Response,
    responses=DISPLAY_PNG_RESPONSE,
    summary="Display rendition of a case's radiograph",
)
async def case_image(
    case_id: str,
    pipeline: PipelineDep,
    settings: SettingsDep,
    case_bank: CaseBankDep,
    observe: ObserveDep,
    window_center: float | None = WINDOW_CENTER_QUERY,
    window_width: float | None = WINDOW_WIDTH_QUERY,
) -> Response:
    async with observe("case_image"), deadline(settings.deadline_s):
        radiograph = await pipeline.run_image_work(
            case_bank.radiograph, case_id, pipeline.max_image_bytes, pipeline.max_decode_bytes
        )
        return await _display_response(pipeline, radiograph, window_center, window_width)


@router.get(
    "/v1/cases/{case_id}/diagnosis",
    response_model=DiagnosisResponse,
    responses=ERROR_RESPONSES,
    summary="The system's diagnosis of a case (as POST /v1/diagnose)",
)
async def case_diagnosis(
    case_id: str,
    options: OptionsDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    case_bank: CaseBankDep,
    observe: ObserveDep,
) -> DiagnosisResponse:
    async with observe("case_diagnosis") as request_id:
        data = await pipeline.run_image_work(case_bank.file_bytes, case_id)
        result = await pipeline.diagnose(
            DiagnoseRequest(ImagePayload(data), options), request_id=request_id, timeout_s=settings.deadline_s
        )
        metrics.observe_diagnosis(result)
        audit.note_models(result.models)
        return DiagnosisResponse.model_validate(to_json_dict(result))


@router.get(
    "/v1/cases/{case_id}/truth",
    response_model=CaseTruthResponse,
    responses=ERROR_RESPONSES,
    summary="The ground truth of a case",
)
async def case_truth(case_id: str, case_bank: CaseBankDep, observe: ObserveDep) -> CaseTruthResponse:
    async with observe("case_truth"):
        case = case_bank.case(case_id)
        heads = [CaseHeadTruth(side=h.side, stage=h.stage, notes=list(h.notes), box=_box(h.box)) for h in case.heads]
        return CaseTruthResponse(
            id=case.id,
            name=case.file_name,
            subject_id=case.subject_id,
            view=case.view,
            width=case.width,
            height=case.height,
            heads=heads,
        )


def mount_web_app(app: FastAPI) -> None:
    """Serve ``web/`` under :data:`WEB_PATH`, ``/`` redirecting to it (a mount belongs to the app, not a router)."""
    if not (WEB_DIR / "index.html").is_file():
        # An install without the web/ folder (a wheel) still serves the API.
        logger.warning("no web app at %s: serving the API only", WEB_DIR)
        return

    @app.get("/", include_in_schema=False)
    async def web_app() -> RedirectResponse:
        return RedirectResponse(f"{WEB_PATH}/")

    app.mount(WEB_PATH, RevalidatedStaticFiles(directory=WEB_DIR, html=True), name="web")


# The page runs only its own scripts (no inline script, no eval, nothing from another origin): the
# API key it keeps in sessionStorage is readable by any script of the page, so no other may run.
# It fetches from its own origin and data: URLs (CAM PNGs), draws blobs and data: images, sets
# element styles from script, and may not be framed (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; connect-src 'self' data:; img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Re-checked on every load (a cheap 304 by ETag): without it, a browser's heuristic caching
    # could mix modules of a new release with cached ones of the old.
    "cache-control": "no-cache",
}


class RevalidatedStaticFiles(StaticFiles):
    """The web app's static files, with :data:`PAGE_HEADERS`."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


def _box(xyxy: tuple[float, float, float, float]) -> BoxResult:
    x0, y0, x1, y1 = xyxy
    return BoxResult(x0=x0, y0=y0, x1=x1, y1=y1)


async def _display_response(
    pipeline: Pipeline, radiograph: Radiograph, center: float | None, width: float | None
) -> Response:
    pixels, source_format = radiograph.pixels, radiograph.source_format
    png, window = await pipeline.run_image_work(windowed_png, pixels, center, width)  # off the loop, bounded
    headers = {
        WINDOW_CENTER_HEADER: f"{window.center:.6g}",
        WINDOW_WIDTH_HEADER: f"{window.width:.6g}",
        IMAGE_WIDTH_HEADER: str(pixels.shape[1]),
        IMAGE_HEIGHT_HEADER: str(pixels.shape[0]),
        SOURCE_FORMAT_HEADER: source_format,
        # Remade on request: cheap, and a case bank may be rebuilt under the same ids.
        "cache-control": "no-store",
    }
    return Response(png, media_type="image/png", headers=headers)
