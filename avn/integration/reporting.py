"""What the DICOM outputs share: who made them (the device, the manufacturer), their series numbers,
the declaration of the private coding scheme, and the source header they are filed under."""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from avn import SOFTWARE_NAME
from avn.integration import codes
from avn.pipeline.results import Diagnosis

MANUFACTURER = "AVN-net"
# The device (this software) as an SR observer: one stable UID, derived from its name under
# pydicom's UID root so that every installation reports the same device.
DEVICE_UID = generate_uid(entropy_srcs=[SOFTWARE_NAME])
# Series numbers of the outputs in the source's study: high, so that viewers list them after the
# modality's own series.
SR_SERIES_NUMBER = 9901
ANNOTATED_SERIES_NUMBER = 9902


def coding_scheme_identification() -> list[Dataset]:
    """The CodingSchemeIdentificationSequence item that declares the private scheme (PS3.3 C.12.1.1.2)."""
    item = Dataset()
    item.CodingSchemeDesignator = codes.PRIVATE_SCHEME
    item.CodingSchemeName = codes.PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return [item]


def staging_version(diagnosis: Diagnosis) -> str:
    """The staging model's version: the model whose answer the report is."""
    return next((model.version for model in diagnosis.models if model.name == "staging"), "unknown")


def source_header(data: bytes) -> Dataset:
    """The header of a DICOM radiograph (no pixel data): what the outputs copy and reference."""
    return dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
