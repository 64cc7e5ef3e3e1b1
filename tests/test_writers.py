"""DICOM and PNG files the phantom writes: tags, dcmdump validity, pixel round trips."""

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from avn.dataset.images import read_radiograph
from avn.phantom.cohort import plan_cohort
from avn.phantom.specs import RenderedRadiograph
from avn.phantom.writers import write_dicom, write_png


def synthetic_image(bits: int, seed: int = 0) -> RenderedRadiograph:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 2**bits, size=(64, 48), dtype=np.uint16)
    pixels[0, 0], pixels[0, 1] = 0, 2**bits - 1  # both ends of the stored range
    return RenderedRadiograph(pixels=pixels, bits_stored=bits, pixel_spacing_mm=0.15)


@pytest.fixture(scope="module")
def spec():
    _, specs = plan_cohort(5, seed=1)
    return specs[0]


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [12, 14, 16])
def test_dicom_round_trip_gives_the_intended_pixels(tmp_path, spec, photometric, bits):
    image = synthetic_image(bits)
    path = tmp_path / "x.dcm"
    write_dicom(path, spec, image, dataset_seed=0, photometric=photometric)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == photometric
    assert ds.BitsStored == bits and ds.HighBit == bits - 1
    stored = ds.pixel_array
    maximum = 2**bits - 1
    # MONOCHROME1 stores bone dark: the raw values are the inverse of the rendering.
    expected_raw = image.pixels if photometric == "MONOCHROME2" else maximum - image.pixels
    np.testing.assert_array_equal(stored, expected_raw)
    decoded = read_radiograph(path)
    np.testing.assert_array_equal(np.rint(decoded.pixels * maximum).astype(np.uint16), image.pixels)
    assert decoded.pixel_spacing == (0.15, 0.15)


def test_dicom_tags_describe_the_radiograph(tmp_path, spec):
    path = tmp_path / "x.dcm"
    write_dicom(path, spec, synthetic_image(14), dataset_seed=9)
    ds = pydicom.dcmread(path)
    assert ds.Modality == spec.detector
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID
    assert ds.PatientID == spec.subject_id
    assert ds.ImageLaterality in ("B", "L", "R")
    assert ds.ViewPosition == "AP"
    assert ("FROG" in ds.SeriesDescription) == (spec.view == "FL")
    assert [float(v) for v in ds.PixelSpacing] == [0.15, 0.15]
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.15, 0.15]
    # Deterministic UIDs: the same seed writes the same UIDs, another seed different ones.
    again = tmp_path / "y.dcm"
    write_dicom(again, spec, synthetic_image(14), dataset_seed=9)
    assert pydicom.dcmread(again).SOPInstanceUID == ds.SOPInstanceUID
    other = tmp_path / "z.dcm"
    write_dicom(other, spec, synthetic_image(14), dataset_seed=10)
    assert pydicom.dcmread(other).StudyInstanceUID != ds.StudyInstanceUID


def test_instances_of_one_subject_share_the_study_not_the_series(tmp_path):
    _, specs = plan_cohort(3, seed=2)
    first, second = [s for s in specs if s.subject_id == specs[0].subject_id][:2]
    write_dicom(tmp_path / "a.dcm", first, synthetic_image(12), dataset_seed=0)
    write_dicom(tmp_path / "b.dcm", second, synthetic_image(12), dataset_seed=0)
    a, b = pydicom.dcmread(tmp_path / "a.dcm"), pydicom.dcmread(tmp_path / "b.dcm")
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID


@pytest.mark.parametrize("detector", ["CR", "DX"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_dcmdump_reads_the_files_without_complaint(tmp_path, spec, detector, photometric):
    dcmdump = shutil.which("dcmdump")
    assert dcmdump, "dcmtk's dcmdump is installed by `make install` (apt package dcmtk)"
    from dataclasses import replace

    path = tmp_path / "x.dcm"
    write_dicom(path, replace(spec, detector=detector), synthetic_image(12), 0, photometric=photometric)
    result = subprocess.run([dcmdump, "--log-level", "warn", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    assert f"(0008,0060) CS [{detector}]" in subprocess.run([dcmdump, str(path)], capture_output=True, text=True).stdout


def test_png_is_16_bit_and_stretched_to_full_range(tmp_path):
    image = synthetic_image(12)
    path = tmp_path / "x.png"
    write_png(path, image)
    decoded = read_radiograph(path)
    assert decoded.bits_stored == 16 and decoded.source_format == "png"
    np.testing.assert_allclose(decoded.pixels, image.pixels / 4095.0, atol=1 / 65535)
