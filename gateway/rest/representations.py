"""The representations ``POST /v1/diagnose`` answers in, chosen by the request's ``Accept`` header:

* ``application/json`` (or anything else, or none): the diagnosis as JSON (``DiagnosisResponse``);
* ``multipart/related; type="application/dicom"``: the DICOM outputs as DICOMweb answers them
  (PS3.18 §8.7.3.3.2) — one ``application/dicom`` part per file, the TID 1500 SR first, then the
  annotated Secondary Capture. The request then needs a DICOM radiograph (400 otherwise).
* ``application/fhir+json``: the FHIR R4 Bundle of :mod:`avn.integration.fhir` (a DiagnosticReport,
  an Observation per femoral head, the Device), as a FHIR server's client expects it.

A client that lists several gets the first of these it names; the JSON is the fallback, so a
client that sends ``*/*`` or nothing keeps getting what it always got.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from enum import Enum

from fastapi import Response

from avn.integration.fhir import FHIR_JSON

DICOM = "application/dicom"
MULTIPART_RELATED = "multipart/related"


class Representation(Enum):
    JSON = "application/json"
    DICOM = f'{MULTIPART_RELATED}; type="{DICOM}"'
    FHIR = FHIR_JSON


def wanted_representation(accept: str) -> Representation:
    """The representation an ``Accept`` header asks for (JSON unless it names another we serve)."""
    for media_range in accept.split(","):
        essence, _, parameters = media_range.partition(";")
        essence = essence.strip().lower()
        if essence == MULTIPART_RELATED and DICOM in parameters.lower():
            return Representation.DICOM
        if essence == FHIR_JSON:
            return Representation.FHIR
    return Representation.JSON


def fhir_response(document: dict) -> Response:
    return Response(json.dumps(document, ensure_ascii=False).encode("utf-8"), media_type=FHIR_JSON)


def multipart_related(parts: Sequence[bytes], part_type: str = DICOM) -> Response:
    """``parts`` as one multipart/related body, each part of ``part_type``."""
    boundary = f"avn-{secrets.token_hex(16)}"  # random: it must not occur inside a DICOM file
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode("ascii")
        body += part + b"\r\n"
    body += f"--{boundary}--\r\n".encode("ascii")
    return Response(bytes(body), media_type=f'{MULTIPART_RELATED}; type="{part_type}"; boundary={boundary}')
