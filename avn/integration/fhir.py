"""The diagnosis of one radiograph as FHIR R4: a Bundle (type ``collection``) holding

* a **DiagnosticReport** (status ``preliminary``: a machine's reading, no physician has verified it;
  category RAD; code LOINC 18748-4 "Diagnostic imaging study"), its conclusion in words, the
  request id as identifier, and for DICOM input ``imagingStudy`` referring to the ImagingStudy by its
  Study Instance UID (a logical reference: the service does not know the server's resource ids);
* one **Observation** per femoral head: code necrosis (SNOMED CT), value present / absent (SNOMED
  CT), body site the femoral head with its laterality (a SNOMED CT post-coordinated expression
  ``2812003:272741003=<side>`` plus the laterality as a component, for consumers that do not
  read expressions), components for the stage, collapse, the probability of presence and of each
  stage, each passed note with its fused probability, and the operating point (its name, threshold
  and validation sensitivity and specificity); the notes in words
  and the low-confidence reasons as ``note``; ``derivedFrom`` the ImagingStudy;
* a **Device**: this software and its version, and the version of every model.

Plain JSON-ready dicts: this module needs no FHIR library (the tests validate the output with
``fhir.resources``' R4 models). Codes are :mod:`avn.integration.codes`, written as FHIR codings.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydicom.sr.coding import Code

from avn import SOFTWARE_NAME
from avn.integration import codes
from avn.integration.reporting import MANUFACTURER
from avn.pipeline.results import Diagnosis, FemoralHead

FHIR_JSON = "application/fhir+json"
SYSTEMS = {
    "SCT": codes.SCT_SYSTEM,
    "DCM": codes.DICOM_SYSTEM,
    "UCUM": codes.UCUM_SYSTEM,
    codes.PRIVATE_SCHEME: codes.PRIVATE_SYSTEM,
}
LOINC_SYSTEM = "http://loinc.org"
REPORT_CODE = {"system": LOINC_SYSTEM, "code": "18748-4", "display": "Diagnostic imaging study"}
RADIOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
IMAGING = {
    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
    "code": "imaging",
    "display": "Imaging",
}
DICOM_UID_SYSTEM = "urn:dicom:uid"  # FHIR's identifier system for DICOM UIDs (values are urn:oid:...)
REQUEST_ID_SYSTEM = "urn:avn-net:request-id"
STATUS = "preliminary"


def coding(code: Code) -> dict[str, str]:
    """A pydicom/highdicom code as a FHIR Coding."""
    return {"system": SYSTEMS[code.scheme_designator], "code": code.value, "display": code.meaning}


def concept(code: Code, text: str | None = None) -> dict[str, Any]:
    return {"coding": [coding(code)], **({"text": text} if text else {})}


def fhir_bundle(diagnosis: Diagnosis, issued: datetime | None = None) -> dict[str, Any]:
    """The Bundle of ``diagnosis`` (see the module docstring)."""
    issued_text = (issued or datetime.now(UTC)).isoformat(timespec="seconds")
    device_url = _urn()
    observations = [(_urn(), head_observation(head, diagnosis, device_url, issued_text)) for head in diagnosis.heads]
    report = diagnostic_report(diagnosis, [url for url, _ in observations], issued_text)
    entries = [(_urn(), report), *observations, (device_url, software_device(diagnosis))]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": issued_text,
        "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries],
    }


def diagnostic_report(diagnosis: Diagnosis, observation_urls: list[str], issued: str) -> dict[str, Any]:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": REQUEST_ID_SYSTEM, "value": diagnosis.request_id or "unknown"}],
        "status": STATUS,
        "category": [{"coding": [RADIOLOGY]}],
        "code": {"coding": [REPORT_CODE], "text": "Femoral-head avascular necrosis on a pelvic radiograph"},
        "issued": issued,
        "result": [{"reference": url} for url in observation_urls],
        "conclusion": conclusion(diagnosis),
    }
    study = imaging_study_reference(diagnosis)
    if study is not None:
        report["imagingStudy"] = [study]
    return report


def conclusion(diagnosis: Diagnosis) -> str:
    """The report in one line per head, e.g. ``right femoral head: AVN stage II (p 0.81)``."""
    lines = []
    for head in diagnosis.heads:
        finding = "no AVN" if head.stage == "absence" else f"AVN stage {head.stage}"
        flag = " — low confidence, route to a human reader" if head.low_confidence else ""
        lines.append(f"{head.side} femoral head: {finding} (p {head.stage_probability:.2f}){flag}")
    return "; ".join(lines)


def imaging_study_reference(diagnosis: Diagnosis) -> dict[str, Any] | None:
    """A logical reference to the ImagingStudy of a DICOM radiograph, by its Study Instance UID."""
    if diagnosis.source is None or not diagnosis.source.study_instance_uid:
        return None
    return {
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{diagnosis.source.study_instance_uid}"},
    }


def head_observation(head: FemoralHead, diagnosis: Diagnosis, device_url: str, issued: str) -> dict[str, Any]:
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": STATUS,
        "category": [{"coding": [IMAGING]}],
        "code": concept(codes.FINDING, "Avascular necrosis of the femoral head"),
        "issued": issued,
        "valueCodeableConcept": concept(codes.PRESENCE_VALUE[head.presence]),
        "bodySite": body_site(head.side),
        "device": {"reference": device_url},
        "component": _components(head) + _operating_point_components(diagnosis),
    }
    notes = _note_texts(head)
    if notes:
        observation["note"] = [{"text": text} for text in notes]
    study = imaging_study_reference(diagnosis)
    if study is not None:
        observation["derivedFrom"] = [study]
    return observation


def body_site(side: str) -> dict[str, Any]:
    """The femoral head of ``side``: SNOMED CT post-coordinated with laterality (272741003)."""
    laterality = codes.LATERALITY[side]
    expression = f"{codes.FEMORAL_HEAD.value}:{codes.LATERALITY_ATTRIBUTE.value}={laterality.value}"
    return {
        "coding": [{"system": codes.SCT_SYSTEM, "code": expression, "display": f"{side.capitalize()} femoral head"}],
        "text": f"{side} femoral head",
    }


def _components(head: FemoralHead) -> list[dict[str, Any]]:
    components = [
        _coded(codes.LATERALITY_ATTRIBUTE, codes.LATERALITY[head.side]),
        _coded(codes.STAGE_NAME, codes.STAGE_VALUE[head.stage]),
        _coded(codes.COLLAPSE_NAME, codes.COLLAPSE_VALUE[head.collapse]),
        _probability(codes.PRESENCE_PROBABILITY, head.presence_probability),
    ]
    components += [_probability(codes.stage_probability_name(p.label), p.probability) for p in head.stage_probabilities]
    for note in head.passed_notes:
        components.append(_coded(codes.NOTE_NAME, codes.NOTE_VALUE[note.note]))
        components.append(_probability(codes.note_probability_name(note.note), note.probability))
    if head.low_confidence:
        components.append(_coded(codes.LOW_CONFIDENCE_NAME, codes.YES))
    return components


def _operating_point_components(diagnosis: Diagnosis) -> list[dict[str, Any]]:
    if diagnosis.operating_point is None:
        return []
    named = _coded(codes.OPERATING_POINT_NAME, codes.operating_point_value(diagnosis.operating_point.name))
    return [named, *(_probability(name, value) for name, value in codes.operating_point_figures(diagnosis))]


def _coded(name: Code, value: Code) -> dict[str, Any]:
    return {"code": concept(name), "valueCodeableConcept": concept(value)}


def _probability(name: Code, value: float) -> dict[str, Any]:
    unit = codes.PROBABILITY_UNIT
    quantity = {"value": round(float(value), 6), "unit": unit.meaning, "system": codes.UCUM_SYSTEM, "code": unit.value}
    return {"code": concept(name), "valueQuantity": quantity}


def _note_texts(head: FemoralHead) -> list[str]:
    texts = []
    if head.passed_notes:
        texts.append("Notes: " + ", ".join(f"{note.note} ({note.probability:.2f})" for note in head.passed_notes))
    if head.low_confidence:
        texts.append("Low confidence: " + "; ".join(head.low_confidence_reasons))
    return texts


def software_device(diagnosis: Diagnosis) -> dict[str, Any]:
    """This software as a FHIR Device: its version, then every model's."""
    versions = [{"type": {"text": "software"}, "value": diagnosis.software_version}]
    versions += [{"type": {"text": f"{model.name} model"}, "value": model.version} for model in diagnosis.models]
    return {
        "resourceType": "Device",
        "deviceName": [{"name": SOFTWARE_NAME, "type": "manufacturer-name"}],
        "manufacturer": MANUFACTURER,
        "version": versions,
    }


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"
