"""Tests of the data-set checker, the annotation renderer and the ``avn data`` sub-commands.

A small valid data set is written to tmp_path (synthetic 16-bit PNGs, no phantom); each defect test
corrupts it in exactly one way and expects the specific problem to be reported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from avn.dataset.check import ERROR, WARNING, CheckReport, Problem, check_dataset
from avn.dataset.cli import data_app
from avn.dataset.format import (
    ANNOTATIONS_FILE,
    FEMORAL_HEAD_CATEGORY,
    FORMAT_VERSION,
    FemoralHeadAnnotation,
    ImageRecord,
    load_dataset,
)
from avn.dataset.show import UnknownImageError, render_annotated
from avn.vocabulary import NOTE_STAGE, SIDES, SPLITS, STAGES, VIEWS, notes_of_stage

AP, FL = VIEWS
LEFT, RIGHT = SIDES
ABSENCE, II, III, IV = STAGES
TRAIN, TEST, E1 = SPLITS[:3]

WIDTH, HEIGHT = 200, 160
# The patient's right hip appears on the image's left.
RIGHT_BOX = [30.0, 60.0, 40.0, 40.0]
LEFT_BOX = [130.0, 60.0, 40.0, 40.0]

# (image id, subject, view, [(side, stage, notes)]) for the valid set.
RADIOGRAPHS = [
    (1, "S0001", AP, [(RIGHT, II, notes_of_stage(II)[:1]), (LEFT, ABSENCE, ())]),
    (2, "S0001", FL, [(RIGHT, II, notes_of_stage(II)[1:2]), (LEFT, ABSENCE, ())]),
    (3, "S0002", AP, [(RIGHT, III, notes_of_stage(III)[1:2]), (LEFT, IV, notes_of_stage(IV)[1:])]),
    (4, "sub/S0003", AP, [(RIGHT, ABSENCE, ()), (LEFT, III, ())]),
]
SPLIT_OF_SUBJECT = {"S0001": TRAIN, "S0002": TEST, "sub/S0003": E1}


def _write_png(path: Path, seed: int) -> None:
    """A 16-bit grey image with two bright discs where the femoral heads are."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(12000, 800, size=(HEIGHT, WIDTH))
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for x, y, w, h in (RIGHT_BOX, LEFT_BOX):
        inside = (xx - (x + w / 2)) ** 2 + (yy - (y + h / 2)) ** 2 < (w / 2) ** 2
        pixels[inside] += 30000
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 65535).astype(np.uint16)).save(path)


def _build_valid_set(folder: Path) -> Path:
    images, annotations = [], []
    splits = {name: [] for name in SPLITS}
    for subject, split in SPLIT_OF_SUBJECT.items():
        splits[split].append(subject)
    for image_id, subject, view, heads in RADIOGRAPHS:
        file_name = f"images/{subject.replace('/', '_')}_{view}_{image_id}.png"
        _write_png(folder / file_name, seed=image_id)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": WIDTH,
                "height": HEIGHT,
                "subject_id": subject,
                "view": view,
                "pixel_spacing": [0.15, 0.15],
            }
        )
        for side, stage, notes in heads:
            box = RIGHT_BOX if side == RIGHT else LEFT_BOX
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": FEMORAL_HEAD_CATEGORY["id"],
                    "bbox": list(box),
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                    "side": side,
                    "stage": stage,
                    "notes": list(notes),
                    "typical": False,
                }
            )
    document = {
        "info": {"description": "test set", "version": FORMAT_VERSION, "generator": "tests", "seed": 0},
        "categories": [dict(FEMORAL_HEAD_CATEGORY)],
        "images": images,
        "annotations": annotations,
        "splits": splits,
    }
    (folder / ANNOTATIONS_FILE).write_text(json.dumps(document, indent=1))
    return folder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return _build_valid_set(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def dataset(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the valid set that a test may corrupt."""
    import shutil

    folder = tmp_path / "set"
    shutil.copytree(pristine, folder)
    return folder


def _corrupt(folder: Path, change: Callable[[dict, Path], None]) -> CheckReport:
    path = folder / ANNOTATIONS_FILE
    document = json.loads(path.read_text())
    change(document, folder)
    path.write_text(json.dumps(document))  # NaN is written as NaN, as Python's exporters do
    return check_dataset(folder)


def _found(report: CheckReport, field: str, fragment: str, severity: str = ERROR) -> Problem:
    matches = [p for p in report.problems if p.field == field and fragment in p.message and p.severity == severity]
    assert matches, f"no {severity} on {field!r} containing {fragment!r}; got:\n{report.format_text()}"
    return matches[0]


def _image(document: dict, image_id: int) -> dict:
    return next(image for image in document["images"] if image["id"] == image_id)


def _annotation(document: dict, annotation_id: int) -> dict:
    return next(a for a in document["annotations"] if a["id"] == annotation_id)


# ---------------------------------------------------------------------------------------------
# The valid set


def test_valid_set_passes_with_counts(pristine: Path) -> None:
    report = check_dataset(pristine)
    assert report.problems == [], report.format_text()
    assert report.ok and report.passes(strict=True)
    counts = report.counts
    assert counts is not None
    assert counts.subjects == 3
    assert counts.radiographs_by_view == {AP: 3, FL: 1}
    assert counts.heads_by_stage == {ABSENCE: 3, II: 2, III: 2, IV: 1}
    assert counts.heads_by_side == {LEFT: 4, RIGHT: 4}
    train, test, e1 = (counts.by_split[name] for name in (TRAIN, TEST, E1))
    assert (train.subjects, train.radiographs, train.femoral_heads) == (1, 2, 4)
    assert (test.subjects, test.radiographs, test.femoral_heads) == (1, 1, 2)
    assert (e1.subjects, e1.radiographs, e1.femoral_heads) == (1, 1, 2)
    assert test.heads_by_stage == {ABSENCE: 0, II: 0, III: 1, IV: 1}
    assert all(counts.by_split[name].radiographs == 0 for name in SPLITS[3:])
    assert set(counts.by_split) == set(SPLITS)
    text = report.format_text()
    assert "no problems" in text and "total" in text
    load_dataset(pristine)  # what passes the checker loads with the typed model


# ---------------------------------------------------------------------------------------------
# One test per defect: (corruption, field, distinctive part of the message)


def _set_image(image_id: int, **values) -> Callable[[dict, Path], None]:
    return lambda document, folder: _image(document, image_id).update(values)


def _set_annotation(annotation_id: int, **values) -> Callable[[dict, Path], None]:
    return lambda document, folder: _annotation(document, annotation_id).update(values)


def _drop_image_field(image_id: int, field: str) -> Callable[[dict, Path], None]:
    return lambda document, folder: _image(document, image_id).pop(field)


def _drop_annotation_field(annotation_id: int, field: str) -> Callable[[dict, Path], None]:
    return lambda document, folder: _annotation(document, annotation_id).pop(field)


def _add_third_head(document: dict, folder: Path) -> None:
    extra = dict(_annotation(document, 1), id=99, bbox=[90.0, 20.0, 20.0, 20.0])
    document["annotations"].append(extra)


def _duplicate_image_id(document: dict, folder: Path) -> None:
    _image(document, 2)["id"] = 1


def _duplicate_file_name(document: dict, folder: Path) -> None:
    _image(document, 2)["file_name"] = _image(document, 1)["file_name"]


def _missing_image_file(document: dict, folder: Path) -> None:
    (folder / _image(document, 3)["file_name"]).unlink()


def _unreadable_image_file(document: dict, folder: Path) -> None:
    (folder / _image(document, 3)["file_name"]).write_bytes(b"this is not a PNG")


def _subject_in_two_splits(document: dict, folder: Path) -> None:
    document["splits"][E1].append("S0002")


def _unknown_split(document: dict, folder: Path) -> None:
    document["splits"]["validation"] = document["splits"].pop(SPLITS[4])


def _unknown_category(document: dict, folder: Path) -> None:
    document["categories"].append({"id": 2, "name": "acetabulum"})


def _wrong_note_for_stage() -> tuple[str, str]:
    note = notes_of_stage(II)[0]
    return note, NOTE_STAGE[note]


def _swap_sides(document: dict, folder: Path) -> None:
    first, second = _annotation(document, 1), _annotation(document, 2)
    first["side"], second["side"] = second["side"], first["side"]


def _cvat_attributes(document: dict, folder: Path) -> None:
    annotation = _annotation(document, 1)
    annotation["attributes"] = {"stage": annotation.pop("stage")}


DEFECTS = {
    "missing_image_key": (_drop_image_field(1, "view"), "view", "missing required field 'view'"),
    "missing_annotation_key": (_drop_annotation_field(2, "bbox"), "bbox", "missing required field 'bbox'"),
    "missing_top_level_key": (lambda d, f: d.pop("images"), "images", "missing required field 'images'"),
    "cvat_attributes_not_moved": (_cvat_attributes, "stage", "inside 'attributes'"),
    "wrong_type_width": (_set_image(1, width="200"), "width", "expected an integer, got string"),
    "wrong_type_notes": (_set_annotation(1, notes="sclerosis"), "notes", "expected a list of strings"),
    "wrong_type_typical": (_set_annotation(1, typical="yes"), "typical", "expected true or false"),
    "unknown_view": (_set_image(1, view="LAT"), "view", "unknown view 'LAT'"),
    "unknown_side": (_set_annotation(1, side="L"), "side", "unknown side 'L'"),
    "unknown_stage": (_set_annotation(1, stage="I"), "stage", "unknown stage 'I'"),
    "unknown_note": (_set_annotation(1, notes=["necrosis"]), "notes", "unknown note 'necrosis'"),
    "unknown_split": (_unknown_split, "splits", "unknown split 'validation'"),
    "unknown_category": (_unknown_category, "categories", "unknown category 2 'acetabulum'"),
    "unknown_category_id": (_set_annotation(1, category_id=3), "category_id", "unknown category_id 3"),
    "box_outside_image": (_set_annotation(2, bbox=[180.0, 60.0, 40.0, 40.0]), "bbox", "extends outside the 200x160"),
    "box_negative_origin": (_set_annotation(2, bbox=[-5.0, 60.0, 40.0, 40.0]), "bbox", "extends outside"),
    "box_degenerate": (_set_annotation(2, bbox=[130.0, 60.0, 0.0, 40.0]), "bbox", "degenerate box"),
    "box_non_finite": (_set_annotation(2, bbox=[130.0, math.nan, 40.0, 40.0]), "bbox", "non-finite"),
    "note_of_other_stage": (
        _set_annotation(5, notes=[_wrong_note_for_stage()[0]]),
        "notes",
        f"note {_wrong_note_for_stage()[0]!r} belongs to stage {_wrong_note_for_stage()[1]}, "
        f"but the annotation's stage is {III}",
    ),
    "note_on_absence": (
        _set_annotation(2, notes=[notes_of_stage(IV)[0]]),
        "notes",
        f"but the annotation's stage is {ABSENCE} ({ABSENCE} has no notes)",
    ),
    "three_heads": (_add_third_head, "annotations", "3 femoral heads annotated"),
    "two_of_one_side": (_set_annotation(2, side=RIGHT), "side", f"2 femoral heads labelled {RIGHT!r}"),
    "sides_swapped": (_swap_sides, "side", "side labels look swapped"),
    "non_finite_pixel_spacing": (_set_image(1, pixel_spacing=[math.inf, 0.15]), "pixel_spacing", "finite"),
    "duplicate_image_id": (_duplicate_image_id, "id", "duplicate image id 1"),
    "duplicate_annotation_id": (_set_annotation(2, id=1), "id", "duplicate annotation id 1"),
    "duplicate_file_name": (_duplicate_file_name, "file_name", "duplicate file name"),
    "annotation_of_missing_image": (_set_annotation(3, image_id=42), "image_id", "refers to image id 42"),
    "missing_image_file": (_missing_image_file, "file_name", "image file not found"),
    "unreadable_image_file": (_unreadable_image_file, "file_name", "unreadable image file"),
    "unsupported_suffix": (_set_image(1, file_name="images/x.tif"), "file_name", "unsupported image type '.tif'"),
    "file_outside_folder": (_set_image(1, file_name="../x.png"), "file_name", "relative to the data-set folder"),
    "subject_in_two_splits": (_subject_in_two_splits, "splits", f"subject is in 2 splits ({TEST} and {E1})"),
    "width_differs_from_file": (
        _set_image(2, width=210),
        "width",
        "width 210 in annotations.json differs from the file's 200",
    ),
    "height_differs_from_file": (_set_image(2, height=150), "height", "differs from the file's 160"),
    "zero_pixel_spacing": (_set_image(1, pixel_spacing=[0.0, 0.15]), "pixel_spacing", "must be positive"),
    "negative_pixel_spacing": (_set_image(1, pixel_spacing=[0.15, -0.1]), "pixel_spacing", "must be positive"),
    "iscrowd": (_set_annotation(1, iscrowd=1), "iscrowd", "iscrowd must be 0"),
    "flat_prosthetic_head": (
        _set_image(1, prosthetic_heads=[[10.0, 10.0, 0.0, 20.0]]),
        "prosthetic_heads",
        "degenerate box: width and height must be > 0",
    ),
    "short_pixel_spacing": (_set_image(1, pixel_spacing=[0.15]), "pixel_spacing", "expected a list of 2 numbers"),
    "text_in_box": (_set_annotation(2, bbox=[130.0, "60", 40.0, 40.0]), "bbox", "expected a list of 4 numbers"),
    "empty_subject_id": (_set_image(1, subject_id=" "), "subject_id", "subject_id is empty"),
    "zero_width": (_set_image(1, width=0), "width", "width should be greater than 0"),
    "not_an_image_record": (lambda d, f: d["images"].append(5), "images", "expected an object, got number 5"),
    "no_femoral_head_category": (lambda d, f: d.update(categories=[]), "categories", "'femoral_head' is missing"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_defect_is_reported(dataset: Path, defect: str) -> None:
    change, field, fragment = DEFECTS[defect]
    report = _corrupt(dataset, change)
    _found(report, field, fragment)
    assert not report.ok
    assert report.counts is None


def test_one_mistake_is_one_problem(dataset: Path) -> None:
    # The image's view is wrong, not its id: its annotations still find it, its file is still listed.
    report = _corrupt(dataset, _set_image(1, view="LAT", pixel_spacing=["a", "b"]))
    assert [(p.item, p.field) for p in report.problems] == [("image 1", "view"), ("image 1", "pixel_spacing")]


def test_repeated_note_is_a_warning(dataset: Path) -> None:
    report = _corrupt(dataset, _set_annotation(1, notes=[notes_of_stage(II)[0]] * 2))
    _found(report, "notes", "is listed 2 times", severity=WARNING)
    assert report.ok


def test_model_takes_labels_from_the_vocabulary() -> None:
    annotation = FemoralHeadAnnotation.model_json_schema()["properties"]
    assert ImageRecord.model_json_schema()["properties"]["view"]["enum"] == list(VIEWS)
    assert (annotation["side"]["enum"], annotation["stage"]["enum"]) == (list(SIDES), list(STAGES))
    assert annotation["notes"]["items"]["enum"] == list(NOTE_STAGE)


def test_problem_names_file_and_item(dataset: Path) -> None:
    report = _corrupt(dataset, _set_image(3, view="LAT"))
    problem = _found(report, "view", "unknown view")
    assert (problem.file, problem.item) == (ANNOTATIONS_FILE, "image 3")
    assert str(problem).startswith(f"{ANNOTATIONS_FILE}: image 3: view: unknown view 'LAT'")


def test_image_file_problem_names_the_image_file(dataset: Path) -> None:
    report = _corrupt(dataset, _unreadable_image_file)
    problem = _found(report, "file_name", "unreadable")
    assert problem.file == _image(json.loads((dataset / ANNOTATIONS_FILE).read_text()), 3)["file_name"]


def test_every_problem_is_collected(dataset: Path) -> None:
    def several(document: dict, folder: Path) -> None:
        _image(document, 1)["view"] = "LAT"
        _annotation(document, 1)["side"] = "L"
        _annotation(document, 2)["bbox"] = [0, 0, -1, 5]

    report = _corrupt(dataset, several)
    assert {p.field for p in report.errors} >= {"view", "side", "bbox"}


def test_missing_annotations_file(dataset: Path) -> None:
    (dataset / ANNOTATIONS_FILE).unlink()
    report = check_dataset(dataset)
    assert not report.ok
    assert "annotations.json not found" in report.problems[0].message


def test_missing_folder(tmp_path: Path) -> None:
    report = check_dataset(tmp_path / "nowhere")
    assert not report.ok and "folder" in report.problems[0].message


def test_invalid_json(dataset: Path) -> None:
    (dataset / ANNOTATIONS_FILE).write_text('{"images": [}')
    report = check_dataset(dataset)
    assert not report.ok
    assert "not valid JSON" in report.problems[0].message and "line 1" in report.problems[0].message


def test_top_level_must_be_an_object(dataset: Path) -> None:
    (dataset / ANNOTATIONS_FILE).write_text("[]")
    report = check_dataset(dataset)
    assert not report.ok and "must be a JSON object" in report.problems[0].message


def test_subject_in_no_split_is_a_warning(dataset: Path) -> None:
    report = _corrupt(dataset, lambda document, folder: document["splits"][E1].clear())
    problem = _found(report, "subject_id", "subject is in no split", severity=WARNING)
    assert problem.item == "subject sub/S0003"
    # Decided: the set stays usable (those radiographs are merely unused); --strict fails it.
    assert report.ok and not report.passes(strict=True)
    assert report.counts is not None and report.counts.by_split["(none)"].radiographs == 1


def test_unlisted_image_file_is_a_warning(dataset: Path) -> None:
    _write_png(dataset / "images" / "stray.png", seed=9)
    report = check_dataset(dataset)
    problem = _found(report, "file_name", "not listed", severity=WARNING)
    assert problem.file == "images/stray.png"
    assert report.ok


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    """A minimal single-frame MONOCHROME1 DX file (bone dark as stored, as many CR/DX write)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [0.15, 0.15]
    ds.PixelData = (65535 - pixels).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_image_is_checked_by_header(dataset: Path, tmp_path: Path) -> None:
    def to_dicom(document: dict, folder: Path) -> None:
        image = _image(document, 4)
        png = folder / image["file_name"]
        pixels = np.asarray(Image.open(png)).astype(np.uint16)
        png.unlink()
        image["file_name"] = str(PurePosixPath(image["file_name"]).with_suffix(".dcm"))
        _write_dicom(folder / image["file_name"], pixels)

    report = _corrupt(dataset, to_dicom)
    assert report.problems == [], report.format_text()
    out = render_annotated(dataset, 4, tmp_path / "dicom.png")
    assert Image.open(out).size == (WIDTH, HEIGHT)

    report = _corrupt(dataset, _set_image(4, height=HEIGHT + 1))
    _found(report, "height", f"differs from the file's {HEIGHT}")


def test_docs_cover_every_label() -> None:
    text = (Path(__file__).parents[1] / "docs" / "dataset.md").read_text()
    for label in (*VIEWS, *SIDES, *STAGES, *NOTE_STAGE, *SPLITS):
        assert f"`{label}`" in text, label
    for stage in STAGES[1:]:  # the notes-to-stage table row of each stage lists exactly its notes
        row = next(line for line in text.splitlines() if line.startswith(f"| `{stage}` |"))
        assert all(f"`{note}`" in row for note in notes_of_stage(stage)), row


# ---------------------------------------------------------------------------------------------
# show


def test_render_annotated_draws_boxes(pristine: Path, tmp_path: Path) -> None:
    out = render_annotated(pristine, 1, tmp_path / "out" / "image1.png", max_side=WIDTH // 2)
    drawn = Image.open(out)
    assert drawn.size == (WIDTH // 2, HEIGHT // 2)
    assert drawn.mode == "RGB"
    pixels = np.asarray(drawn).astype(int)
    x, y, w, h = (round(v / 2) for v in RIGHT_BOX)
    on_outline = pixels[y + h // 2, x]
    inside = pixels[y + h // 2, x + w // 2]
    # The source is grey (R = G = B); a drawn outline is coloured, the head inside stays grey.
    assert len(set(on_outline)) > 1, on_outline
    assert len(set(inside)) == 1, inside


def test_render_keeps_small_images_at_full_size(pristine: Path, tmp_path: Path) -> None:
    out = render_annotated(pristine, 2, tmp_path / "image2.png")
    assert Image.open(out).size == (WIDTH, HEIGHT)


def test_render_unknown_image_id(pristine: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownImageError, match="no image with id 77"):
        render_annotated(pristine, 77, tmp_path / "x.png")
    assert issubclass(UnknownImageError, ValueError)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_check_exit_codes(dataset: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(data_app, ["check", str(dataset)])
    assert result.exit_code == 0, result.output
    assert "no problems" in result.output

    _corrupt(dataset, _set_image(1, view="LAT"))
    result = runner.invoke(data_app, ["check", str(dataset)])
    assert result.exit_code == 1
    assert f"{ANNOTATIONS_FILE}: image 1: view: unknown view 'LAT'" in result.output


def test_cli_check_json_and_strict(dataset: Path) -> None:
    runner = CliRunner()
    _corrupt(dataset, lambda document, folder: document["splits"][E1].clear())
    assert runner.invoke(data_app, ["check", str(dataset)]).exit_code == 0
    assert runner.invoke(data_app, ["check", "--strict", str(dataset)]).exit_code == 1
    result = runner.invoke(data_app, ["check", "--json", str(dataset)])
    report = json.loads(result.output)
    assert report["ok"] is True and report["problems"][0]["severity"] == WARNING


def test_cli_show(pristine: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "shown.png"
    result = runner.invoke(data_app, ["show", str(pristine), "--image", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    result = runner.invoke(data_app, ["show", str(pristine), "--image", "77", "--out", str(out)])
    assert result.exit_code == 1
    assert "no image with id 77" in result.output
