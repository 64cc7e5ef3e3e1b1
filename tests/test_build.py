"""Whole phantom data sets: determinism across worker counts, and `avn data check` accepting them."""

import filecmp
import json

import pytest
from typer.testing import CliRunner

from avn.cli import app
from avn.dataset.check import check_dataset
from avn.dataset.format import load_dataset
from avn.dataset.images import read_radiograph
from avn.phantom.build import PhantomOptions, build_phantom

SMALL = dict(subjects=4, seed=11, scale=0.12)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same small data set built with one worker and with two."""
    out = {}
    for workers in (1, 2):
        folder = tmp_path_factory.mktemp(f"phantom_w{workers}")
        build_phantom(PhantomOptions(image_format="dicom", **SMALL), folder, workers=workers)
        out[workers] = folder
    return out


def test_same_seed_gives_identical_files_whatever_the_workers(built):
    one, two = built[1], built[2]
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert any(str(f).endswith(".dcm") for f in files)
    match, mismatch, errors = filecmp.cmpfiles(one, two, [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []


def test_another_seed_gives_other_pixels(built, tmp_path):
    build_phantom(PhantomOptions(image_format="dicom", **{**SMALL, "seed": 12}), tmp_path, workers=1)
    first = sorted(built[1].rglob("*.dcm"))[0]
    other = sorted(tmp_path.rglob("*.dcm"))[0]
    assert first.read_bytes() != other.read_bytes()


def test_built_data_set_passes_the_checker_with_its_counts(built):
    report = check_dataset(built[1])
    assert report.ok, report.format_text()
    dataset = load_dataset(built[1])
    assert len(dataset.images) >= SMALL["subjects"]
    assert {image.view for image in dataset.images} <= {"AP", "FL"}
    json.loads((built[1] / "annotations.json").read_text())


def test_json_sizes_and_spacing_match_the_files(built):
    dataset = load_dataset(built[1])
    for image in dataset.images:
        decoded = read_radiograph(built[1] / image.file_name)
        assert (decoded.width, decoded.height) == (image.width, image.height)
        assert decoded.pixel_spacing == pytest.approx(image.pixel_spacing, abs=1e-3)


def test_png_format_through_the_cli(tmp_path):
    result = CliRunner().invoke(
        app, ["phantom", "--subjects", "2", "--seed", "3", "--format", "png", "--scale", "0.1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    pngs = list(tmp_path.rglob("*.png"))
    assert pngs and all(read_radiograph(p).bits_stored == 16 for p in pngs)
    checked = CliRunner().invoke(app, ["data", "check", str(tmp_path)])
    assert checked.exit_code == 0, checked.output


def test_unknown_format_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["phantom", "--subjects", "2", "--format", "tiff", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown format" in result.output
