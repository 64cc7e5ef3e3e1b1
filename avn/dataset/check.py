"""Validation of a data-set folder (docs/dataset.md) before anything trains, tests or evaluates on it.

``check_dataset`` reads ``annotations.json`` and the image *headers* and reports every problem it
finds; it never raises for a bad data set, because a hospital exporting its own radiographs should
see all of its mistakes in one run, not one per attempt. Each ``Problem`` names the file
(``annotations.json`` or the image's file name), the item (``image 12``, ``annotation 40``,
``subject S0003``, ``split E4``), the JSON field and what is wrong.

Severity. An *error* makes the set unusable or its labels untrustworthy and sets ``ok`` to False.
A *warning* is legal but probably unintended, and wastes data rather than corrupting it:
  - a subject whose radiographs are in no split (nothing trains or tests on them);
  - a subject listed in a split without any radiograph, or listed twice in one split;
  - a radiograph without any femoral-head annotation (it only serves as a detection negative);
  - an image file in the folder that ``annotations.json`` does not list;
  - a pixel spacing outside the plausible range for a radiograph;
  - a note listed twice on one annotation; a format version other than this checker's.
Counts are computed only when there is no error, since they would mislead otherwise. A set that
passes loads with ``format.load_dataset`` (the checker confirms it as its last step).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from io import StringIO
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from avn.dataset.format import ANNOTATIONS_FILE, FEMORAL_HEAD_CATEGORY, FORMAT_VERSION, Dataset
from avn.dataset.images import IMAGE_SUFFIXES, ImageReadError, image_size
from avn.vocabulary import NOTE_STAGE, NOTES, SIDES, SPLITS, STAGES, VIEWS

ERROR = "error"
WARNING = "warning"

# Exporters round box corners to the pixel grid, so a box may pass the border by half a pixel.
BOX_TOLERANCE_PX = 0.5
# Detector pixels are 0.1-0.2 mm; exports downsampled for storage reach a few tenths of a mm.
PLAUSIBLE_SPACING_MM = (0.02, 1.0)
# Header reads wait on the disk, not the CPU, so a few threads per core pay off on network shares.
MAX_HEADER_READERS = 16
# The pseudo split under which counts list subjects that are in no split.
NO_SPLIT = "(none)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data set; ``str()`` gives the line the CLI prints."""

    file: str
    item: str
    field: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        return f"{self.file}: {self.item}: {self.field}: {self.message}"


@dataclass(frozen=True)
class GroupCounts:
    """What a group of radiographs (the whole set, or one split) holds."""

    subjects: int
    radiographs: int
    femoral_heads: int
    radiographs_by_view: dict[str, int]
    heads_by_stage: dict[str, int]
    heads_by_side: dict[str, int]


@dataclass(frozen=True)
class DatasetCounts:
    """The whole set, and each split (plus ``NO_SPLIT`` when some subjects are in none)."""

    total: GroupCounts
    by_split: dict[str, GroupCounts]

    @property
    def subjects(self) -> int:
        return self.total.subjects

    @property
    def radiographs_by_view(self) -> dict[str, int]:
        return self.total.radiographs_by_view

    @property
    def heads_by_stage(self) -> dict[str, int]:
        return self.total.heads_by_stage

    @property
    def heads_by_side(self) -> dict[str, int]:
        return self.total.heads_by_side


@dataclass(frozen=True)
class CheckReport:
    """The outcome of ``check_dataset``: problems (errors and warnings) and, when sound, counts."""

    folder: Path
    problems: list[Problem]
    counts: DatasetCounts | None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        """True when the set is usable: no errors (warnings allowed)."""
        return not self.errors

    def passes(self, strict: bool = False) -> bool:
        """``ok``, or with ``strict`` also free of warnings."""
        return not self.problems if strict else self.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "ok": self.ok,
            "problems": [asdict(p) for p in self.problems],
            "counts": asdict(self.counts) if self.counts else None,
        }

    def format_text(self) -> str:
        """The CLI report: a verdict, problems one per line, then the counts table."""
        lines = [f"Data set {self.folder}: {_verdict(self)}"]
        for title, problems in (("Errors", self.errors), ("Warnings", self.warnings)):
            if problems:
                lines += ["", f"{title} ({len(problems)}):"]
                lines += [f"  {problem}" for problem in problems]
        if self.counts is not None:
            lines += ["", _counts_table_text(self.counts)]
        return "\n".join(lines).rstrip() + "\n"


def check_dataset(folder: str | Path) -> CheckReport:
    """Check a data-set folder; every problem is collected, nothing is raised for a bad set."""
    folder = Path(folder)
    problems = _Problems()
    try:
        counts = _check(folder, problems)
    except Exception as error:  # a checker bug must still yield a report, not a traceback
        problems.error(ANNOTATIONS_FILE, "data set", "", f"the checker failed unexpectedly: {error!r}")
        counts = None
    return CheckReport(folder=folder, problems=problems.items, counts=counts)


# ---------------------------------------------------------------------------------------------
# The pipeline


def _check(folder: Path, problems: _Problems) -> DatasetCounts | None:
    document = _read_annotations(folder, problems)
    if document is None:
        return None
    top = _check_top_level(document, problems)
    _check_info(document.get("info"), problems)
    _check_categories(document.get("categories"), problems)
    images = _check_images(top.get("images", []), problems)
    _check_image_files(folder, images, problems)
    annotations = _check_annotations(top.get("annotations", []), images, problems)
    _check_heads_per_image(images, annotations, problems)
    _check_splits(top.get("splits", {}), images, problems)
    if problems.has_errors:
        return None
    return _counts_of(document, problems)


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []

    def error(self, file: str, item: str, field: str, message: str) -> None:
        self.items.append(Problem(file, item, field, message, ERROR))

    def warning(self, file: str, item: str, field: str, message: str) -> None:
        self.items.append(Problem(file, item, field, message, WARNING))

    @property
    def has_errors(self) -> bool:
        return any(p.severity == ERROR for p in self.items)


def _read_annotations(folder: Path, problems: _Problems) -> dict | None:
    path = folder / ANNOTATIONS_FILE
    if not folder.is_dir():
        problems.error(ANNOTATIONS_FILE, "data set", "", f"data-set folder {folder} not found")
        return None
    if not path.is_file():
        problems.error(ANNOTATIONS_FILE, "data set", "", f"{ANNOTATIONS_FILE} not found in {folder}")
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        problems.error(
            ANNOTATIONS_FILE,
            "data set",
            "",
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
        )
        return None
    except (OSError, UnicodeDecodeError) as error:
        problems.error(ANNOTATIONS_FILE, "data set", "", f"cannot be read as UTF-8 text: {error}")
        return None
    if not isinstance(document, dict):
        problems.error(
            ANNOTATIONS_FILE,
            "data set",
            "",
            f"the top level must be a JSON object, got {_describe(document)}",
        )
        return None
    return document


# ---------------------------------------------------------------------------------------------
# Field types: each field is checked once for presence and type; later checks read only fields
# that passed, so one mistake yields one problem rather than a cascade.


@dataclass(frozen=True)
class _FieldType:
    description: str
    accepts: Callable[[Any], bool]


def _is_integer(value: Any) -> bool:
    # JSON writers sometimes emit 12.0 for 12; the typed model accepts that, so we do too.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_list(length: int) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and len(value) == length and all(map(_is_number, value))


INTEGER = _FieldType("an integer", _is_integer)
NUMBER = _FieldType("a number", _is_number)
TEXT = _FieldType("a string", lambda value: isinstance(value, str))
BOOLEAN = _FieldType("true or false", lambda value: isinstance(value, bool))
OBJECT = _FieldType("an object", lambda value: isinstance(value, dict))
LIST = _FieldType("a list", lambda value: isinstance(value, list))
TEXT_LIST = _FieldType(
    "a list of strings", lambda value: isinstance(value, list) and all(isinstance(v, str) for v in value)
)
INTEGER_OR_NULL = _FieldType("an integer or null", lambda value: value is None or _is_integer(value))
SPACING = _FieldType("[row_mm, col_mm]: a list of 2 numbers", _number_list(2))
BOX = _FieldType("[x, y, width, height]: a list of 4 numbers", _number_list(4))

REQUIRED, OPTIONAL = True, False

TOP_LEVEL_FIELDS = {
    "images": (LIST, REQUIRED),
    "annotations": (LIST, REQUIRED),
    "splits": (OBJECT, REQUIRED),
    "info": (OBJECT, OPTIONAL),
    "categories": (LIST, OPTIONAL),
}
INFO_FIELDS = {
    "description": (TEXT, OPTIONAL),
    "version": (TEXT, OPTIONAL),
    "generator": (TEXT, OPTIONAL),
    "seed": (INTEGER_OR_NULL, OPTIONAL),
}
CATEGORY_FIELDS = {"id": (INTEGER, REQUIRED), "name": (TEXT, REQUIRED)}
IMAGE_FIELDS = {
    "id": (INTEGER, REQUIRED),
    "file_name": (TEXT, REQUIRED),
    "width": (INTEGER, REQUIRED),
    "height": (INTEGER, REQUIRED),
    "subject_id": (TEXT, REQUIRED),
    "view": (TEXT, REQUIRED),
    "pixel_spacing": (SPACING, REQUIRED),
}
ANNOTATION_FIELDS = {
    "id": (INTEGER, REQUIRED),
    "image_id": (INTEGER, REQUIRED),
    "category_id": (INTEGER, OPTIONAL),
    "bbox": (BOX, REQUIRED),
    "area": (NUMBER, OPTIONAL),
    "iscrowd": (INTEGER, OPTIONAL),
    "side": (TEXT, REQUIRED),
    "stage": (TEXT, REQUIRED),
    "notes": (TEXT_LIST, OPTIONAL),
    "typical": (BOOLEAN, OPTIONAL),
}


def _check_fields(
    record: dict,
    spec: dict[str, tuple[_FieldType, bool]],
    item: str,
    problems: _Problems,
    prefix: str = "",
) -> set[str]:
    """Report missing and mistyped fields; return the names of the fields that are usable."""
    usable = set()
    for name, (field_type, required) in spec.items():
        if name not in record:
            if required:
                problems.error(ANNOTATIONS_FILE, item, prefix + name, _missing_message(record, name))
        elif field_type.accepts(record[name]):
            usable.add(name)
        else:
            problems.error(
                ANNOTATIONS_FILE,
                item,
                prefix + name,
                f"wrong type: expected {field_type.description}, got {_describe(record[name])}",
            )
    return usable


def _missing_message(record: dict, name: str) -> str:
    # CVAT's COCO export keeps custom labels in an "attributes" object; say so where that happened.
    attributes = record.get("attributes")
    if isinstance(attributes, dict) and name in attributes:
        return (
            f"missing required field {name!r} (it is inside 'attributes': move CVAT attributes "
            "to top-level fields, see docs/dataset.md)"
        )
    return f"missing required field {name!r}"


def _describe(value: Any) -> str:
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    kind = kinds.get(type(value), "number")
    shown = json.dumps(value) if not isinstance(value, (dict, list)) else ""
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{kind} {shown}".rstrip()


def _unknown_label(kind: str, value: str, allowed: Iterable[str]) -> str:
    return f"unknown {kind} {value!r}; expected one of {', '.join(allowed)}"


# ---------------------------------------------------------------------------------------------
# Top level, info, categories


def _check_top_level(document: dict, problems: _Problems) -> dict:
    usable = _check_fields(document, TOP_LEVEL_FIELDS, "data set", problems)
    return {name: document[name] for name in usable}


def _check_info(info: Any, problems: _Problems) -> None:
    if not isinstance(info, dict):
        return  # absent (optional) or already reported as mistyped
    usable = _check_fields(info, INFO_FIELDS, "info", problems, prefix="info.")
    if "version" in usable and info["version"] != FORMAT_VERSION:
        problems.warning(
            ANNOTATIONS_FILE,
            "info",
            "info.version",
            f"format version {info['version']!r} differs from this checker's {FORMAT_VERSION!r}",
        )


def _check_categories(categories: Any, problems: _Problems) -> None:
    if not isinstance(categories, list):
        return
    expected = f"{FEMORAL_HEAD_CATEGORY['id']} {FEMORAL_HEAD_CATEGORY['name']!r}"
    found = False
    for index, category in enumerate(categories):
        item = f"categories[{index}]"
        if not isinstance(category, dict):
            problems.error(ANNOTATIONS_FILE, item, "categories", f"expected an object, got {_describe(category)}")
            continue
        usable = _check_fields(category, CATEGORY_FIELDS, item, problems, prefix="categories.")
        if {"id", "name"} - usable:
            continue
        if category["id"] == FEMORAL_HEAD_CATEGORY["id"] and category["name"] == FEMORAL_HEAD_CATEGORY["name"]:
            found = True
        else:
            problems.error(
                ANNOTATIONS_FILE,
                item,
                "categories",
                f"unknown category {category['id']} {category['name']!r}; the only category is {expected}",
            )
    if not found:
        problems.error(ANNOTATIONS_FILE, "categories", "categories", f"category {expected} is missing")


# ---------------------------------------------------------------------------------------------
# Images


@dataclass
class _Record:
    """An image or annotation record as far as it could be read; ``usable`` lists its sound fields."""

    index: int
    item: str
    record: dict
    usable: set[str]

    def get(self, name: str) -> Any:
        return self.record[name] if name in self.usable else None


def _item_name(kind: str, plural: str, record: Any, index: int) -> str:
    if isinstance(record, dict) and _is_integer(record.get("id")):
        return f"{kind} {int(record['id'])}"
    return f"{plural}[{index}]"


def _check_images(records: list, problems: _Problems) -> dict[int, _Record]:
    """Check each image record; return the first record of each usable id."""
    images: list[_Record] = []
    for index, record in enumerate(records):
        item = _item_name("image", "images", record, index)
        if not isinstance(record, dict):
            problems.error(ANNOTATIONS_FILE, item, "images", f"expected an object, got {_describe(record)}")
            continue
        image = _Record(index, item, record, _check_fields(record, IMAGE_FIELDS, item, problems))
        _check_image_values(image, problems)
        images.append(image)
    _report_duplicates(images, "id", "image id", "images", problems)
    _report_duplicates(images, "file_name", "file name", "images", problems, key=_normalised_file_name)
    by_id: dict[int, _Record] = {}
    for image in images:
        if "id" in image.usable:
            by_id.setdefault(int(image.record["id"]), image)
    return by_id


def _check_image_values(image: _Record, problems: _Problems) -> None:
    view = image.get("view")
    if view is not None and view not in VIEWS:
        problems.error(ANNOTATIONS_FILE, image.item, "view", _unknown_label("view", view, VIEWS))
        image.usable.discard("view")
    subject = image.get("subject_id")
    if subject is not None and not subject.strip():
        problems.error(ANNOTATIONS_FILE, image.item, "subject_id", "subject_id is empty")
        image.usable.discard("subject_id")
    for name in ("width", "height"):
        value = image.get(name)
        if value is not None and value <= 0:
            problems.error(ANNOTATIONS_FILE, image.item, name, f"{name} must be positive, got {value}")
            image.usable.discard(name)
    _check_pixel_spacing(image, problems)
    _check_file_name(image, problems)


def _check_pixel_spacing(image: _Record, problems: _Problems) -> None:
    spacing = image.get("pixel_spacing")
    if spacing is None:
        return
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        problems.error(
            ANNOTATIONS_FILE,
            image.item,
            "pixel_spacing",
            f"pixel spacing must be positive and finite, got {spacing} mm",
        )
        return
    low, high = PLAUSIBLE_SPACING_MM
    if not all(low <= v <= high for v in spacing):
        problems.warning(
            ANNOTATIONS_FILE,
            image.item,
            "pixel_spacing",
            f"pixel spacing {spacing} mm is implausible for a radiograph (expected {low}-{high} mm)",
        )


def _check_file_name(image: _Record, problems: _Problems) -> None:
    name = image.get("file_name")
    if name is None:
        return
    reason = _file_name_fault(name)
    if reason:
        problems.error(ANNOTATIONS_FILE, image.item, "file_name", reason)
        image.usable.discard("file_name")


def _file_name_fault(name: str) -> str | None:
    if not name.strip():
        return "file_name is empty"
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        return f"file_name {name!r} must be a path relative to the data-set folder, inside it"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return (
            f"unsupported image type {path.suffix or '(no suffix)'!r} in {name!r}; "
            "name DICOM files *.dcm and PNG files *.png"
        )
    return None


def _normalised_file_name(name: str) -> str:
    return PurePosixPath(name).as_posix()


def _report_duplicates(
    entries: list[_Record],
    field: str,
    what: str,
    plural: str,
    problems: _Problems,
    key: Callable[[Any], Any] = lambda value: value,
) -> None:
    owners: dict[Any, list[_Record]] = defaultdict(list)
    for entry in entries:
        if field in entry.usable:
            owners[key(entry.record[field])].append(entry)
    for value, sharing in owners.items():
        if len(sharing) > 1:
            # Records sharing an id share their item name too, so name them by position instead.
            listed = ", ".join(f"{plural}[{entry.index}]" if field == "id" else entry.item for entry in sharing)
            shown = int(value) if field == "id" else repr(value)
            problems.error(
                ANNOTATIONS_FILE,
                sharing[1].item,
                field,
                f"duplicate {what} {shown}: used by {len(sharing)} records ({listed})",
            )


# ---------------------------------------------------------------------------------------------
# Image files (headers only)


def _check_image_files(folder: Path, images: dict[int, _Record], problems: _Problems) -> None:
    listed = [image for image in images.values() if "file_name" in image.usable]
    sizes = _read_sizes(folder, [image.record["file_name"] for image in listed])
    for image in listed:
        name = image.record["file_name"]
        size = sizes[name]
        if isinstance(size, str):
            problems.error(name, image.item, "file_name", size)
            continue
        for field, actual in zip(("width", "height"), size, strict=True):
            stated = image.get(field)
            if stated is not None and int(stated) != actual:
                problems.error(
                    name,
                    image.item,
                    field,
                    f"{field} {int(stated)} in {ANNOTATIONS_FILE} differs from the file's {actual} pixels",
                )
    _report_unlisted_files(folder, {_normalised_file_name(image.record["file_name"]) for image in listed}, problems)


def _read_sizes(folder: Path, names: list[str]) -> dict[str, tuple[int, int] | str]:
    """(width, height) of each file, or the reason it cannot be read."""
    unique = list(dict.fromkeys(names))
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_HEADER_READERS, len(unique))) as pool:
        results = pool.map(lambda name: _size_or_reason(folder / name, name), unique)
        return dict(zip(unique, results, strict=True))


def _size_or_reason(path: Path, name: str) -> tuple[int, int] | str:
    if not path.is_file():
        hint = " (use forward slashes in file_name)" if "\\" in name else ""
        return f"image file not found in the data-set folder{hint}"
    try:
        return image_size(path)
    except ImageReadError as error:
        return f"unreadable image file: {error}"
    except Exception as error:  # a decoder bug on a hostile file is still "unreadable"
        return f"unreadable image file: {error!r}"


def _report_unlisted_files(folder: Path, listed: set[str], problems: _Problems) -> None:
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        name = path.relative_to(folder).as_posix()
        if name not in listed:
            problems.warning(name, "image file", "file_name", f"image file is not listed in {ANNOTATIONS_FILE}")


# ---------------------------------------------------------------------------------------------
# Annotations


def _check_annotations(records: list, images: dict[int, _Record], problems: _Problems) -> list[_Record]:
    """Check each annotation; return those that are sound enough for per-radiograph checks."""
    annotations: list[_Record] = []
    for index, record in enumerate(records):
        item = _item_name("annotation", "annotations", record, index)
        if not isinstance(record, dict):
            problems.error(ANNOTATIONS_FILE, item, "annotations", f"expected an object, got {_describe(record)}")
            continue
        annotation = _Record(index, item, record, _check_fields(record, ANNOTATION_FIELDS, item, problems))
        _check_annotation_labels(annotation, problems)
        _check_annotation_image(annotation, images, problems)
        _check_box(annotation, images, problems)
        _check_coco_extras(annotation, problems)
        annotations.append(annotation)
    _report_duplicates(annotations, "id", "annotation id", "annotations", problems)
    return annotations


def _check_annotation_labels(annotation: _Record, problems: _Problems) -> None:
    item = annotation.item
    side = annotation.get("side")
    if side is not None and side not in SIDES:
        problems.error(ANNOTATIONS_FILE, item, "side", _unknown_label("side", side, SIDES))
        annotation.usable.discard("side")
    stage = annotation.get("stage")
    if stage is not None and stage not in STAGES:
        problems.error(ANNOTATIONS_FILE, item, "stage", _unknown_label("stage", stage, STAGES))
        annotation.usable.discard("stage")
        stage = None
    notes = annotation.get("notes") or []
    for note, times in Counter(notes).items():
        if times > 1:
            problems.warning(ANNOTATIONS_FILE, item, "notes", f"note {note!r} is listed {times} times")
    for note in dict.fromkeys(notes):
        if note not in NOTE_STAGE:
            problems.error(ANNOTATIONS_FILE, item, "notes", _unknown_label("note", note, NOTES))
        elif stage is not None and NOTE_STAGE[note] != stage:
            problems.error(ANNOTATIONS_FILE, item, "notes", _note_stage_message(note, stage))


def _note_stage_message(note: str, stage: str) -> str:
    message = f"note {note!r} belongs to stage {NOTE_STAGE[note]}, but the annotation's stage is {stage}"
    if not any(owner == stage for owner in NOTE_STAGE.values()):
        message += f" ({stage} has no notes)"
    return message


def _check_annotation_image(annotation: _Record, images: dict[int, _Record], problems: _Problems) -> None:
    category = annotation.get("category_id")
    if category is not None and category != FEMORAL_HEAD_CATEGORY["id"]:
        problems.error(
            ANNOTATIONS_FILE,
            annotation.item,
            "category_id",
            f"unknown category_id {category}; femoral heads use category {FEMORAL_HEAD_CATEGORY['id']}",
        )
    image_id = annotation.get("image_id")
    if image_id is not None and int(image_id) not in images:
        problems.error(
            ANNOTATIONS_FILE,
            annotation.item,
            "image_id",
            f"refers to image id {int(image_id)}, which is not in images",
        )
        annotation.usable.discard("image_id")


def _check_box(annotation: _Record, images: dict[int, _Record], problems: _Problems) -> None:
    box = annotation.get("bbox")
    if box is None:
        return
    x, y, w, h = box
    if not all(math.isfinite(v) for v in box):
        problems.error(ANNOTATIONS_FILE, annotation.item, "bbox", f"box has non-finite values {box}")
    elif w <= 0 or h <= 0:
        problems.error(
            ANNOTATIONS_FILE,
            annotation.item,
            "bbox",
            f"degenerate box: width and height must be > 0, got w={w:g}, h={h:g}",
        )
    else:
        image_id = annotation.get("image_id")
        image = images.get(int(image_id)) if image_id is not None else None
        width, height = (image.get("width"), image.get("height")) if image else (None, None)
        if width is not None and height is not None and _box_leaves_image(box, width, height):
            problems.error(
                ANNOTATIONS_FILE,
                annotation.item,
                "bbox",
                f"box [x={x:g}, y={y:g}, w={w:g}, h={h:g}] extends outside the {width}x{height} image",
            )
        return
    annotation.usable.discard("bbox")


def _box_leaves_image(box: list[float], width: int, height: int) -> bool:
    x, y, w, h = box
    t = BOX_TOLERANCE_PX
    return x < -t or y < -t or x + w > width + t or y + h > height + t


def _check_coco_extras(annotation: _Record, problems: _Problems) -> None:
    area = annotation.get("area")
    if area is not None and not (math.isfinite(area) and area >= 0):
        problems.error(ANNOTATIONS_FILE, annotation.item, "area", f"area must be a finite number >= 0, got {area}")
    crowd = annotation.get("iscrowd")
    if crowd is not None and crowd != 0:
        problems.error(
            ANNOTATIONS_FILE,
            annotation.item,
            "iscrowd",
            f"iscrowd must be 0 (each femoral head is one object), got {crowd}",
        )


# ---------------------------------------------------------------------------------------------
# Femoral heads per radiograph


def _check_heads_per_image(images: dict[int, _Record], annotations: list[_Record], problems: _Problems) -> None:
    heads: dict[int, list[_Record]] = defaultdict(list)
    for annotation in annotations:
        if "image_id" in annotation.usable:
            heads[int(annotation.record["image_id"])].append(annotation)
    for image_id, image in images.items():
        on_image = heads.get(image_id, [])
        if not on_image:
            problems.warning(ANNOTATIONS_FILE, image.item, "annotations", "radiograph has no femoral-head annotation")
            continue
        if len(on_image) > 2:
            problems.error(
                ANNOTATIONS_FILE,
                image.item,
                "annotations",
                f"{len(on_image)} femoral heads annotated ({_items(on_image)}); a radiograph shows at most two",
            )
        _check_sides_on_image(image, on_image, problems)


def _check_sides_on_image(image: _Record, heads: list[_Record], problems: _Problems) -> None:
    by_side: dict[str, list[_Record]] = defaultdict(list)
    for head in heads:
        if "side" in head.usable:
            by_side[head.record["side"]].append(head)
    for side, same in by_side.items():
        if len(same) > 1:
            problems.error(
                ANNOTATIONS_FILE,
                image.item,
                "side",
                f"{len(same)} femoral heads labelled {side!r} ({_items(same)}); each side appears at most once",
            )
    right, left = by_side.get(SIDES[1], []), by_side.get(SIDES[0], [])
    if len(right) == 1 and len(left) == 1 and _centre_x(right[0]) > _centre_x(left[0]):
        problems.error(
            ANNOTATIONS_FILE,
            image.item,
            "side",
            f"side labels look swapped: the {SIDES[1]!r} head ({right[0].item}) lies right of the "
            f"{SIDES[0]!r} head ({left[0].item}) on the image, but the patient's right hip appears "
            "on the image's left",
        )


def _centre_x(annotation: _Record) -> float:
    box = annotation.get("bbox")
    return box[0] + box[2] / 2 if box is not None else math.nan


def _items(entries: list[_Record]) -> str:
    return ", ".join(entry.item for entry in entries)


# ---------------------------------------------------------------------------------------------
# Splits


def _check_splits(splits: dict, images: dict[int, _Record], problems: _Problems) -> None:
    split_of: dict[str, list[str]] = defaultdict(list)
    for name, subjects in splits.items():
        if name not in SPLITS:
            problems.error(ANNOTATIONS_FILE, f"split {name}", "splits", _unknown_label("split", name, SPLITS))
        if not TEXT_LIST.accepts(subjects):
            problems.error(
                ANNOTATIONS_FILE,
                f"split {name}",
                f"splits.{name}",
                f"wrong type: expected a list of subject ids (strings), got {_describe(subjects)}",
            )
            continue
        for subject, times in Counter(subjects).items():
            split_of[subject].append(name)
            if times > 1:
                problems.warning(
                    ANNOTATIONS_FILE,
                    f"subject {subject}",
                    f"splits.{name}",
                    f"subject is listed {times} times in split {name}",
                )
    radiographs = Counter(image.record["subject_id"] for image in images.values() if "subject_id" in image.usable)
    for subject, names in split_of.items():
        if len(names) > 1:
            problems.error(
                ANNOTATIONS_FILE,
                f"subject {subject}",
                "splits",
                f"subject is in {len(names)} splits ({' and '.join(names)}); all of a subject's "
                "radiographs must stay in one split",
            )
        if subject not in radiographs:
            problems.warning(
                ANNOTATIONS_FILE,
                f"subject {subject}",
                f"splits.{names[0]}",
                f"subject is listed in split {names[0]} but has no radiograph",
            )
    for subject, count in radiographs.items():
        if subject not in split_of:
            problems.warning(
                ANNOTATIONS_FILE,
                f"subject {subject}",
                "subject_id",
                f"subject is in no split: its {count} radiograph(s) are used by neither training nor testing",
            )


# ---------------------------------------------------------------------------------------------
# Counts


def _counts_of(document: dict, problems: _Problems) -> DatasetCounts | None:
    try:
        dataset = Dataset.model_validate(document)
    except ValidationError as error:
        # The checker should have caught everything the typed model rejects; if not, say so.
        for detail in error.errors():
            problems.error(
                ANNOTATIONS_FILE,
                "data set",
                ".".join(map(str, detail["loc"])),
                f"rejected by the data-set model: {detail['msg']}",
            )
        return None
    split_of = dataset.split_of_subject()
    groups: dict[str, list] = {name: [] for name in SPLITS}
    for image in dataset.images:
        groups.setdefault(split_of.get(image.subject_id, NO_SPLIT), []).append(image)
    heads = defaultdict(list)
    for annotation in dataset.annotations:
        heads[annotation.image_id].append(annotation)
    by_split = {name: _count_group(members, heads) for name, members in groups.items()}
    return DatasetCounts(total=_count_group(dataset.images, heads), by_split=by_split)


def _count_group(images: list, heads: dict[int, list]) -> GroupCounts:
    annotations = [a for image in images for a in heads.get(image.id, [])]
    return GroupCounts(
        subjects=len({image.subject_id for image in images}),
        radiographs=len(images),
        femoral_heads=len(annotations),
        radiographs_by_view=_tally((image.view for image in images), VIEWS),
        heads_by_stage=_tally((a.stage for a in annotations), STAGES),
        heads_by_side=_tally((a.side for a in annotations), SIDES),
    )


def _tally(values: Iterable[str], labels: tuple[str, ...]) -> dict[str, int]:
    counted = Counter(values)
    return {label: counted.get(label, 0) for label in labels}


# ---------------------------------------------------------------------------------------------
# Text rendering


def _verdict(report: CheckReport) -> str:
    errors, warnings = len(report.errors), len(report.warnings)
    if not errors and not warnings:
        return "OK, no problems found"
    parts = [f"{errors} error{'s' * (errors != 1)}", f"{warnings} warning{'s' * (warnings != 1)}"]
    status = "usable" if not errors else "NOT usable"
    return f"{status}; {', '.join(parts)}"


def _counts_table_text(counts: DatasetCounts) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Counts (radiographs by view, femoral heads by side and stage)", box=box.SIMPLE_HEAD)
    columns = ["split", "subjects", "radiographs", *VIEWS, "FHs", *SIDES, *STAGES]
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    rows = [(name, group) for name, group in counts.by_split.items()] + [("total", counts.total)]
    for name, group in rows:
        table.add_row(
            name,
            *map(str, (group.subjects, group.radiographs, *group.radiographs_by_view.values())),
            str(group.femoral_heads),
            *map(str, (*group.heads_by_side.values(), *group.heads_by_stage.values())),
        )
    buffer = StringIO()
    Console(file=buffer, width=120, color_system=None, force_terminal=False).print(table)
    return buffer.getvalue()
