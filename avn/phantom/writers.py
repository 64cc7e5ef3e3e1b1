"""Writes rendered radiographs as DICOM (CR or DX, MONOCHROME1 or 2) or 16-bit PNG files.

The DICOM objects carry what a PACS export would: patient/study/series/instance UIDs (derived
deterministically from the data-set seed, so reruns give identical files), pixel spacing, view,
image laterality, and the detector's photometric interpretation. MONOCHROME1 stores bone dark
(inverted values) as many CR readers do; readers must invert it back.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from avn.phantom.specs import RadiographSpec, RenderedRadiograph

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
SERIES_DESCRIPTION = {"AP": "PELVIS AP", "FL": "PELVIS FROG-LEG LATERAL"}
# A fixed study date keeps files reproducible; the phantom has no real calendar.
BASE_DATE = dt.date(2024, 1, 1)


def write_png(path: Path, image: RenderedRadiograph) -> None:
    """16-bit grey PNG, values stretched from ``bits_stored`` to the full 16-bit range."""
    maximum = 2**image.bits_stored - 1
    full_range = (image.pixels.astype(np.uint32) * 65535 + maximum // 2) // maximum
    path.parent.mkdir(parents=True, exist_ok=True)
    # Level 1 trades a few percent of size for a several-fold faster write.
    if not cv2.imwrite(str(path), full_range.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"could not write {path}")


def photometric_for(spec: RadiographSpec) -> str:
    """CR plates are mostly exported MONOCHROME1 here, DX panels MONOCHROME2, with exceptions."""
    draw = np.random.default_rng([spec.seed, 7]).random()
    if spec.detector == "CR":
        return "MONOCHROME1" if draw < 0.7 else "MONOCHROME2"
    return "MONOCHROME2" if draw < 0.8 else "MONOCHROME1"


def write_dicom(
    path: Path,
    spec: RadiographSpec,
    image: RenderedRadiograph,
    dataset_seed: int,
    photometric: str | None = None,
) -> None:
    """Write a CR or DX object; ``photometric`` defaults to the detector's usual choice."""
    photometric = photometric or photometric_for(spec)
    maximum = 2**image.bits_stored - 1
    stored = image.pixels if photometric == "MONOCHROME2" else (maximum - image.pixels)
    ds = _base_dataset(spec, dataset_seed)
    _fill_image_pixel_module(ds, stored.astype(np.uint16), image.bits_stored, photometric)
    _fill_acquisition(ds, spec, image, photometric)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _uid(dataset_seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=[str(dataset_seed), *map(str, parts)])


def _base_dataset(spec: RadiographSpec, dataset_seed: int) -> FileDataset:
    sop_class = CR_IMAGE_STORAGE if spec.detector == "CR" else DX_PRESENTATION_STORAGE
    sop_instance = _uid(dataset_seed, spec.subject_id, spec.image_id, "instance")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    study_date = (BASE_DATE + dt.timedelta(days=spec.anatomy.anatomy_seed % 365)).strftime("%Y%m%d")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.AccessionNumber = f"A{spec.subject_id}"
    ds.Modality = spec.detector
    ds.Manufacturer = "AVN-net phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "PELVIS"
    ds.SeriesDescription = SERIES_DESCRIPTION[spec.view]
    ds.PatientName = f"PHANTOM^{spec.subject_id}"
    ds.PatientID = spec.subject_id
    ds.PatientBirthDate = ""
    ds.PatientSex = spec.anatomy.sex
    ds.StudyInstanceUID = _uid(dataset_seed, spec.subject_id, "study")
    ds.SeriesInstanceUID = _uid(dataset_seed, spec.subject_id, spec.image_id, "series")
    ds.StudyID = spec.subject_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = spec.image_id
    ds.BodyPartExamined = "PELVIS"
    return ds


def _fill_image_pixel_module(ds: FileDataset, stored: np.ndarray, bits: int, photometric: str) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = stored.tobytes()
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    # A window over the middle of the stored range, as a modality would suggest for display.
    ds.WindowCenter = int(2 ** (bits - 1))
    ds.WindowWidth = int(2**bits - 1)
    ds.BurnedInAnnotation = "YES"  # the side marker is part of the pixels


def _fill_acquisition(ds: FileDataset, spec: RadiographSpec, image: RenderedRadiograph, photometric: str) -> None:
    spacing = [f"{image.pixel_spacing_mm:.4f}"] * 2
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = spacing
    # Rows run towards the patient's left (their right hip is on the image's left), columns to the feet.
    ds.PatientOrientation = ["L", "F"]
    sides = {hip.side for hip in spec.hips}
    coned = spec.missing_reason == "collimated"
    ds.ImageLaterality = ("R" if "right" in sides else "L") if coned else "B"
    # Frog-leg lateral is still an anteroposterior beam with the thighs abducted.
    ds.ViewPosition = "AP"
    ds.ProtocolName = SERIES_DESCRIPTION[spec.view]
    ds.AcquisitionDeviceProcessingDescription = SERIES_DESCRIPTION[spec.view]
    if spec.detector == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        # +1: higher values mean more X-ray intensity (dark on display), true of MONOCHROME1 here.
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
        ds.DetectorType = "SCINTILLATOR"
    else:
        ds.PlateType = "STANDARD"
    ds.DistanceSourceToDetector = 1150
    ds.KVP = 75 + (spec.seed % 11)
