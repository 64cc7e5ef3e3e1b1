"""The REST front door: a FastAPI app with the same operations as the gRPC service.

=======================  ===================================================================
``POST /v1/diagnose``    one radiograph: the raw file as the body (``Content-Type`` image/png,
                         image/jpeg, application/dicom, or application/octet-stream to let the
                         gateway recognise it), or ``multipart/form-data`` with a ``file`` part
``POST /v1/studies``     several radiographs of one subject, ``multipart/form-data``, one part each
``GET /v1/models``       name, version, input size and labels of every model
``GET /healthz``         the process is alive (no model involved)
``GET /readyz``          200 only when every model is loaded and answers, else 503 + Retry-After
``GET /metrics``         Prometheus text (:mod:`gateway.metrics`)
``POST /v1/render``      the web app's display rendition of one radiograph (body as for diagnose):
                         an 8-bit PNG under a window centre/width (:mod:`gateway.display`)
``GET /v1/cases``        the self-study case bank (:mod:`gateway.cases`); per case:
                         ``/v1/cases/{id}/image`` (rendition), ``/diagnosis``, ``/truth``
``GET /``                redirects to the web app, static files under ``/app/`` (``web/``)
=======================  ===================================================================

Options are query parameters of both POSTs: ``include_overlay``, ``cam_stage``, ``note_threshold``.
Results are pydantic models generated from the dataclasses of :mod:`avn.pipeline.results` (PNG
fields as base64), so the OpenAPI document at ``/docs`` describes every field. Failures go through
the one mapping of :mod:`gateway.errors`: the status it gives, the body ``{"error": {"code",
"message", "request_id"}}`` (``code`` is the error type, e.g. ``InvalidImage``), ``Retry-After`` on
503. A body over ``AVN_MAX_PAYLOAD_BYTES`` is refused with 413 while it streams in, before it is decoded.

The package: ``app`` (:func:`create_app`, :func:`rest_server`), ``routers/`` (``diagnosis``:
diagnose and studies; ``service``: models, health, readiness, metrics; ``web``: renditions, the
case bank and the page), ``dependencies`` (pipeline, settings, metrics, options, request id and
observation), ``bodies`` (reading uploads under the limit), ``models`` (the JSON bodies),
``openapi`` (what the document says beyond them) and ``error_handlers``.
"""

from gateway.rest.app import create_app, rest_server
from gateway.rest.error_handlers import error_response
from gateway.rest.models import DiagnosisResponse, StudyResponse

__all__ = ["DiagnosisResponse", "StudyResponse", "create_app", "error_response", "rest_server"]
