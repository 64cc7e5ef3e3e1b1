"""The diagnosis of one DICOM radiograph as a Comprehensive SR following TID 1500 (Measurement Report).

One measurement group (TID 1410, planar ROI) per femoral head:

* tracking identifier ``"<side> femoral head"`` with a UID of its own;
* the head box as a closed POLYLINE SCOORD in the source image's pixel coordinates, referencing the
  source image by its SOP Class and Instance UIDs;
* finding: necrosis (SNOMED CT) at the femoral head with its laterality (SNOMED CT right / left);
* qualitative evaluations: presence (SNOMED CT present / absent), the stage, collapse, each passed
  note, the operating point (DCM "CAD Operating Point") and, when set, the low-confidence flag;
* measurements (UCUM ``1``): the probability of each stage, of presence, of each passed note, and
  the operating point's threshold with its validation sensitivity and specificity;
* the algorithm: the staging model's name and version.

Every code comes from :mod:`avn.integration.codes`. The SR goes into the source's study (patient
and study modules copied from the source header by highdicom), in a new series of its own, and lists
the source image as evidence. Nothing is read from pixels here: the header is enough.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from avn import SOFTWARE_NAME
from avn.integration import codes
from avn.integration.codes import operating_point_figures
from avn.integration.reporting import (
    DEVICE_UID,
    MANUFACTURER,
    SR_SERIES_NUMBER,
    coding_scheme_identification,
    staging_version,
)
from avn.pipeline.results import Diagnosis, FemoralHead

SR_SERIES_DESCRIPTION = "AVN-net femoral-head report"


def structured_report(
    diagnosis: Diagnosis,
    source: Dataset,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sr.ComprehensiveSR:
    """The TID 1500 Comprehensive SR of ``diagnosis``, about the radiograph whose header is ``source``.

    ``source`` needs the patient, study and SOP common modules (pixel data is not needed). UIDs are
    made fresh unless given (tests pin them).
    """
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=[_head_group(head, source, diagnosis) for head in diagnosis.heads],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # a machine's reading, not verified by a physician
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
    )
    sr.SoftwareVersions = diagnosis.software_version
    sr.CodingSchemeIdentificationSequence = coding_scheme_identification()
    return sr


def _observation_context() -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=DEVICE_UID, name=SOFTWARE_NAME, manufacturer_name=MANUFACTURER, model_name=SOFTWARE_NAME
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DEVICE_OBSERVER,
            observer_identifying_attributes=device,
        )
    )


def _head_group(
    head: FemoralHead, source: Dataset, diagnosis: Diagnosis
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{head.side} femoral head"),
        referenced_region=head_region(head, source),
        finding_type=codes.FINDING,
        finding_category=codes.FINDING_CATEGORY,
        algorithm_id=hd.sr.AlgorithmIdentification(name=f"{SOFTWARE_NAME} staging", version=staging_version(diagnosis)),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.FEMORAL_HEAD, laterality=codes.LATERALITY[head.side])],
        measurements=_measurements(head)
        + [_probability(name, value) for name, value in operating_point_figures(diagnosis)],
        qualitative_evaluations=_evaluations(head, diagnosis),
    )


def head_region(head: FemoralHead, source: Dataset) -> hd.sr.ImageRegion:
    """The head box as a closed polyline over the source image (column, row pixel coordinates)."""
    x0, y0, x1, y1 = head.box.as_tuple()
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=corners,
        source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
    )


def _evaluations(head: FemoralHead, diagnosis: Diagnosis) -> list[hd.sr.QualitativeEvaluation]:
    evaluation = hd.sr.QualitativeEvaluation
    items = [
        evaluation(codes.PRESENCE_NAME, codes.PRESENCE_VALUE[head.presence]),
        evaluation(codes.STAGE_NAME, codes.STAGE_VALUE[head.stage]),
        evaluation(codes.COLLAPSE_NAME, codes.COLLAPSE_VALUE[head.collapse]),
    ]
    items += [evaluation(codes.NOTE_NAME, codes.NOTE_VALUE[note.note]) for note in head.passed_notes]
    if diagnosis.operating_point is not None:
        items.append(
            evaluation(codes.OPERATING_POINT_NAME, codes.operating_point_value(diagnosis.operating_point.name))
        )
    if head.low_confidence:
        items.append(evaluation(codes.LOW_CONFIDENCE_NAME, codes.YES))
    return items


def _measurements(head: FemoralHead) -> list[hd.sr.Measurement]:
    figures = [(codes.stage_probability_name(item.label), item.probability) for item in head.stage_probabilities]
    figures.append((codes.PRESENCE_PROBABILITY, head.presence_probability))
    figures += [(codes.note_probability_name(note.note), note.probability) for note in head.passed_notes]
    return [_probability(name, value) for name, value in figures]


def _probability(name, value: float) -> hd.sr.Measurement:
    # Rounded: a float32 probability printed in full is noise past the sixth digit, and a DS holds 16 characters.
    return hd.sr.Measurement(name=name, value=round(float(value), 6), unit=codes.PROBABILITY_UNIT)
