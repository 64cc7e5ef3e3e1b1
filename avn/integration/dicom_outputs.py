"""The DICOM outputs of one diagnosis, as Part 10 files: the TID 1500 SR and the annotated copy.

Built per request from the source file's header (never cached: each output is a new instance with
UIDs of its own, and the header names the patient and study it is filed under).
"""

from __future__ import annotations

import io
from dataclasses import replace

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from avn.integration.annotated_copy import annotated_copy
from avn.integration.dicom_sr import structured_report
from avn.integration.reporting import source_header
from avn.pipeline.results import Diagnosis

DICOM_MEDIA_TYPE = "application/dicom"


def with_dicom_outputs(diagnosis: Diagnosis, source_file: bytes) -> Diagnosis:
    """``diagnosis`` with ``dicom_sr`` and ``dicom_annotated`` filled in; it must carry its overlay."""
    if diagnosis.overlay_png is None:
        raise ValueError("the annotated copy needs the overlay: render it before building the DICOM outputs")
    header = source_header(source_file)
    return replace(
        diagnosis,
        dicom_sr=part10(structured_report(diagnosis, header)),
        dicom_annotated=part10(annotated_copy(diagnosis, header, diagnosis.overlay_png)),
    )


def part10(dataset: Dataset) -> bytes:
    """``dataset`` as a DICOM Part 10 file (preamble, File Meta, data set)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
