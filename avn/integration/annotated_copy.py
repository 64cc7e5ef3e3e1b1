"""The annotated radiograph as a DICOM Secondary Capture in the source's study.

The pixels are the overlay :mod:`avn.pipeline.render` draws (boxes in the stage colours, labels,
heat maps, passed notes) as 8-bit RGB, at the radiograph's own size. The object says plainly that
software made it and that text is burnt into it, so no one mistakes it for an acquisition:

* Image Type ``DERIVED\\SECONDARY``, Conversion Type ``WSD`` (workstation), Burned In Annotation
  ``YES`` and a Derivation Description saying what was drawn (no coded derivation in CID 7203 names
  "drew annotations on it", and the Derivation Code Sequence is optional);
* Source Image Sequence naming the source radiograph (purpose of reference: DCM 121322 "Source
  image for image processing operation");
* Manufacturer, software version, a series of its own (number 9902) in the source study.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from avn import SOFTWARE_NAME
from avn.integration.reporting import ANNOTATED_SERIES_NUMBER, MANUFACTURER
from avn.pipeline.results import Diagnosis

ANNOTATED_SERIES_DESCRIPTION = "AVN-net annotated radiograph"
DERIVATION = "Radiograph annotated by software: femoral-head boxes, AVN stages, heat maps and notes drawn in"


def annotated_copy(
    diagnosis: Diagnosis,
    source: Dataset,
    overlay_png: bytes,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sc.SCImage:
    """A Secondary Capture of ``overlay_png`` (RGB) filed in ``source``'s study, referencing ``source``."""
    pixels = _rgb(overlay_png)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=ANNOTATED_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=_patient_orientation(source),
        transfer_syntax_uid=hd.UID("1.2.840.10008.1.2.1"),  # explicit VR little endian: every PACS takes it
    )
    _mark_as_made_by_software(image, source, diagnosis)
    return image


def _rgb(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.uint8)


def _patient_orientation(source: Dataset) -> tuple[str, str]:
    # The overlay keeps the radiograph's geometry, so its orientation is the source's; a radiograph
    # that does not say is taken as the AP convention (patient's left to the image's right, feet down).
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2:
        return (str(value[0]), str(value[1]))
    return ("L", "F")


def _mark_as_made_by_software(image: Dataset, source: Dataset, diagnosis: Diagnosis) -> None:
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.ConversionType = "WSD"
    # Both hips are on a pelvic radiograph: the laterality of the image is "both" (B), the
    # source's own value when it says.
    image.ImageLaterality = source.get("ImageLaterality") or "B"
    image.BurnedInAnnotation = "YES"
    image.RecognizableVisualFeatures = "NO"
    image.DerivationDescription = DERIVATION
    image.SeriesDescription = ANNOTATED_SERIES_DESCRIPTION
    image.SoftwareVersions = diagnosis.software_version
    image.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    image.SecondaryCaptureDeviceManufacturerModelName = SOFTWARE_NAME
    image.SecondaryCaptureDeviceSoftwareVersions = diagnosis.software_version
    image.SourceImageSequence = [_source_reference(source)]


def _source_reference(source: Dataset) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = Dataset()
    concept = codes.DCM.SourceImageForImageProcessingOperation
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = (
        concept.value,
        concept.scheme_designator,
        concept.meaning,
    )
    reference.PurposeOfReferenceCodeSequence = [purpose]
    return reference
