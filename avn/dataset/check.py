"""Validation of a data-set folder (docs/dataset.md) before anything trains, tests or evaluates on it.

``check_dataset`` reads ``annotations.json`` and the image *headers* and reports every problem it
finds; it never raises for a bad data set, because a hospital exporting its own radiographs should
see all of its mistakes in one run, not one per attempt. Each ``Problem`` names the file
(``annotations.json`` or the image's file name), the item (``image 12``, ``annotation 40``,
``subject S0003``, ``split E4``), the JSON field and what is wrong.

The typed model (``avn.dataset.format``) is the schema: validating with it yields every type and
value error, each with its location, and this module only words them for the report. What the
model cannot see is checked here: what spans records (unique ids and file names, annotations of
existing images, at most two heads per radiograph and one per side, sides in radiological order,
each subject in one split) and what needs the files (present, decodable, of the stated size, and
holding the boxes). These checks read only values the model accepted, so one mistake yields one
problem rather than a cascade. A set that passes therefore loads with ``format.load_dataset``.

Severity. An *error* makes the set unusable or its labels untrustworthy and sets ``ok`` to False.
A *warning* is legal but probably unintended, and wastes data rather than corrupting it:
  - a subject whose radiographs are in no split (nothing trains or tests on them);
  - a subject listed in a split without any radiograph, or listed twice in one split;
  - a radiograph without any femoral-head annotation (it only serves as a detection negative);
  - an image file in the folder that ``annotations.json`` does not list;
  - a pixel spacing outside the plausible range for a radiograph;
  - a note listed twice on one annotation; a format version other than this checker's.
Counts are computed only when there is no error, since they would mislead otherwise.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from avn.dataset.format import ANNOTATIONS_FILE, FORMAT_VERSION, UNKNOWN_LABEL, Dataset
from avn.dataset.images import IMAGE_SUFFIXES, ImageReadError, image_size
from avn.dataset.report import ERROR, WARNING, CheckReport, DatasetCounts, Problem, counts_of
from avn.vocabulary import SIDES

# Exporters round box corners to the pixel grid, so a box may pass the border by half a pixel.
BOX_TOLERANCE_PX = 0.5
# Detector pixels are 0.1-0.2 mm; exports downsampled for storage reach a few tenths of a mm.
PLAUSIBLE_SPACING_MM = (0.02, 1.0)
# Header reads wait on the disk, not the CPU, so a few threads per core pay off on network shares.
MAX_HEADER_READERS = 16


def check_dataset(folder: str | Path) -> CheckReport:
    """Check a data-set folder; every problem is collected, nothing is raised for a bad set."""
    folder = Path(folder)
    problems = _Problems()
    try:
        counts = _check(folder, problems)
    except Exception as error:  # a checker bug must still yield a report, not a traceback
        problems.error("data set", "", f"the checker failed unexpectedly: {error!r}")
        counts = None
    return CheckReport(folder=folder, problems=problems.items, counts=counts)


# ---------------------------------------------------------------------------------------------
# The pipeline


def _check(folder: Path, problems: _Problems) -> DatasetCounts | None:
    raw = _read_annotations(folder, problems)
    if raw is None:
        return None
    dataset, document = _validate(raw)
    for error in document.errors:
        problems.error(document.item(error["loc"]), _field(error["loc"]), _message(error, document))
    _check_version(document, problems)
    image_records = document.records("images")
    images = _check_images(image_records, problems)
    _check_image_files(folder, image_records, problems)
    annotations = _check_annotations(document.records("annotations"), images, problems)
    _check_heads_per_image(images, annotations, problems)
    _check_splits(document, images, problems)
    if dataset is None or problems.has_errors:
        return None
    return counts_of(dataset)


class _Problems:
    """The problems found so far, each once (the model may report one mistake at several places)."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self._seen: set[Problem] = set()

    def error(self, item: str, field: str, message: str, file: str = ANNOTATIONS_FILE) -> None:
        self._add(Problem(file, item, field, message, ERROR))

    def warning(self, item: str, field: str, message: str, file: str = ANNOTATIONS_FILE) -> None:
        self._add(Problem(file, item, field, message, WARNING))

    def _add(self, problem: Problem) -> None:
        if problem not in self._seen:
            self._seen.add(problem)
            self.items.append(problem)

    @property
    def has_errors(self) -> bool:
        return any(p.severity == ERROR for p in self.items)


def _read_annotations(folder: Path, problems: _Problems) -> dict | None:
    path = folder / ANNOTATIONS_FILE
    fault = None
    if not folder.is_dir():
        fault = f"data-set folder {folder} not found"
    elif not path.is_file():
        fault = f"{ANNOTATIONS_FILE} not found in {folder}"
    else:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            fault = f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        except (OSError, UnicodeDecodeError) as error:
            fault = f"cannot be read as UTF-8 text: {error}"
        else:
            if isinstance(document, dict):
                return document
            fault = f"the top level must be a JSON object, got {_describe(document)}"
    problems.error("data set", "", fault)
    return None


# ---------------------------------------------------------------------------------------------
# The model's verdict


def _validate(raw: dict) -> tuple[Dataset | None, _Document]:
    try:
        return Dataset.model_validate(raw), _Document(raw, [])
    except ValidationError as error:
        return None, _Document(raw, error.errors())


# Sections of annotations.json that list records with an id, and what one record is called.
RECORD_KINDS = {"images": "image", "annotations": "annotation", "categories": "category"}


class _Document:
    """The raw ``annotations.json`` with the model's errors: which values may the checks read."""

    def __init__(self, raw: dict, errors: list[dict]) -> None:
        self.raw = raw
        self.errors = errors
        # A wrong split *name* leaves its subject list readable, so key errors reject nothing.
        self._rejected = {tuple(e["loc"]) for e in errors if "[key]" not in e["loc"]}
        self._holding_errors = {loc[:n] for loc in self._rejected for n in range(1, len(loc) + 1)}

    def get(self, *path: str | int) -> Any:
        """The raw value at ``path`` if the model accepted it as a whole; None if rejected or absent."""
        return None if path in self._holding_errors else self.reach(*path)

    def reach(self, *path: str | int) -> Any:
        """The raw value at ``path`` unless a container of it was rejected (it may itself be wrong)."""
        inside_rejected = any(path[:n] in self._rejected for n in range(1, len(path)))
        return None if inside_rejected else _raw_at(self.raw, path)

    def records(self, section: str) -> list[_Record]:
        listed = self.reach(section)
        if not isinstance(listed, list):
            return []
        return [_Record(self, section, index) for index, record in enumerate(listed) if isinstance(record, dict)]

    def item(self, loc: tuple) -> str:
        """How the report names the thing at ``loc``: ``image 12``, ``split E4``, ``info``, ..."""
        if len(loc) < 2:
            return "data set"
        section, key = loc[0], loc[1]
        if section in RECORD_KINDS:
            record_id = self.get(section, key, "id")
            return f"{RECORD_KINDS[section]} {int(record_id)}" if record_id is not None else f"{section}[{key}]"
        return f"split {key}" if section == "splits" else str(section)


@dataclass(frozen=True)
class _Record:
    """An image or annotation record; ``get`` gives only the fields the model accepted."""

    document: _Document
    section: str
    index: int

    @property
    def item(self) -> str:
        return self.document.item((self.section, self.index))

    def get(self, name: str) -> Any:
        return self.document.get(self.section, self.index, name)

    def reach(self, name: str) -> Any:
        return self.document.reach(self.section, self.index, name)


def _raw_at(value: Any, path: Iterable[str | int]) -> Any:
    for part in path:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            return None
    return value


# ---------------------------------------------------------------------------------------------
# The model's errors, worded for the report


def _field_loc(loc: tuple) -> tuple:
    """The location of the JSON field an error is about: a record's field, or a top-level entry."""
    return loc[:3] if loc and loc[0] in RECORD_KINDS else loc[:2]


def _field(loc: tuple) -> str:
    field_loc = _field_loc(loc)
    if not field_loc:
        return ""
    if field_loc[0] in RECORD_KINDS:
        return str(field_loc[2]) if len(field_loc) > 2 else field_loc[0]
    if "[key]" in loc:  # a wrong split name
        return field_loc[0]
    return ".".join(map(str, field_loc))  # info.version, splits.E1


def _message(error: dict, document: _Document) -> str:
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == "missing" and loc and isinstance(loc[-1], str):  # a missing tuple item is a list too short
        return _missing_message(_raw_at(document.raw, loc[:-1]), loc[-1])
    if kind in ("value_error", UNKNOWN_LABEL):  # the model's own rules, already worded for people
        return error["msg"].removeprefix("Value error, ")
    if kind.endswith(("_type", "_parsing")) or kind in ("int_from_float", "missing", "too_short", "too_long"):
        field_loc = _field_loc(loc)
        return f"wrong type: expected {_expected(field_loc)}, got {_describe(_raw_at(document.raw, field_loc))}"
    # A constraint such as gt=0: "Input should be greater than 0" becomes "width should be ...".
    return f"{_field(loc) or 'the data set'} {error['msg'].removeprefix('Input ')}, got {_describe(error['input'])}"


def _missing_message(record: Any, name: str) -> str:
    # CVAT's COCO export keeps custom labels in an "attributes" object; say so where that happened.
    attributes = record.get("attributes") if isinstance(record, dict) else None
    if isinstance(attributes, dict) and name in attributes:
        return (
            f"missing required field {name!r} (it is inside 'attributes': move CVAT attributes "
            "to top-level fields, see docs/dataset.md)"
        )
    return f"missing required field {name!r}"


_SCHEMA = Dataset.model_json_schema()
_TYPE_NAMES = {
    "integer": ("an integer", "integers"),
    "number": ("a number", "numbers"),
    "string": ("a string", "strings"),
    "boolean": ("true or false", "booleans"),
    "object": ("an object", "objects"),
    "array": ("a list", "lists"),
    "null": ("null", "nulls"),
}


def _expected(loc: tuple) -> str:
    """What the model's JSON schema expects at ``loc``, e.g. "a list of 2 numbers (...)"."""
    schema = _SCHEMA
    for part in loc:
        schema = _resolve(schema)
        if isinstance(part, int):
            schema = schema["items"]
        else:
            schema = schema["properties"][part] if "properties" in schema else schema["additionalProperties"]
    return _describe_schema(schema)


def _resolve(schema: dict) -> dict:
    return _SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema


def _describe_schema(schema: dict, plural: bool = False) -> str:
    described = _resolve(schema)
    if "anyOf" in described:
        return " or ".join(_describe_schema(option, plural) for option in described["anyOf"])
    kind = described.get("type", "object")
    if kind == "array" and not plural:
        if "prefixItems" in described:
            items = described["prefixItems"]
            text = f"a list of {len(items)} {_describe_schema(items[0], plural=True)}"
        else:
            text = f"a list of {_describe_schema(described['items'], plural=True)}"
    else:
        text = _TYPE_NAMES[kind][plural]
    return f"{text} ({schema['description']})" if "description" in schema and not plural else text


def _describe(value: Any) -> str:
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    kind = kinds.get(type(value), "number")
    shown = json.dumps(value) if not isinstance(value, dict) else ""
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{kind} {shown}".rstrip()


# ---------------------------------------------------------------------------------------------
# Info


def _check_version(document: _Document, problems: _Problems) -> None:
    version = document.get("info", "version")
    if version is not None and version != FORMAT_VERSION:
        problems.warning(
            "info",
            "info.version",
            f"format version {version!r} differs from this checker's {FORMAT_VERSION!r}",
        )


# ---------------------------------------------------------------------------------------------
# Images


def _check_images(images: list[_Record], problems: _Problems) -> dict[int, _Record]:
    """Check what spans image records; return the first record of each id."""
    _report_duplicates(images, "id", "image id", problems)
    _report_duplicates(images, "file_name", "file name", problems, key=_normalised_file_name)
    for image in images:
        _check_spacing_plausible(image, problems)
    by_id: dict[int, _Record] = {}
    for image in images:
        if image.get("id") is not None:
            by_id.setdefault(int(image.get("id")), image)
    return by_id


def _check_spacing_plausible(image: _Record, problems: _Problems) -> None:
    spacing = image.get("pixel_spacing")
    low, high = PLAUSIBLE_SPACING_MM
    if spacing is not None and not all(low <= v <= high for v in spacing):
        problems.warning(
            image.item,
            "pixel_spacing",
            f"pixel spacing {spacing} mm is implausible for a radiograph (expected {low}-{high} mm)",
        )


def _normalised_file_name(name: str) -> str:
    return PurePosixPath(name).as_posix()


def _report_duplicates(
    entries: list[_Record],
    field: str,
    what: str,
    problems: _Problems,
    key: Callable[[Any], Any] = lambda value: value,
) -> None:
    owners: dict[Any, list[_Record]] = defaultdict(list)
    for entry in entries:
        if entry.get(field) is not None:
            owners[key(entry.get(field))].append(entry)
    for value, sharing in owners.items():
        if len(sharing) > 1:
            # Records sharing an id share their item name too, so name them by position instead.
            listed = ", ".join(f"{entry.section}[{entry.index}]" if field == "id" else entry.item for entry in sharing)
            shown = int(value) if field == "id" else repr(value)
            problems.error(
                sharing[1].item,
                field,
                f"duplicate {what} {shown}: used by {len(sharing)} records ({listed})",
            )


# ---------------------------------------------------------------------------------------------
# Image files (headers only)


def _check_image_files(folder: Path, images: list[_Record], problems: _Problems) -> None:
    listed = [image for image in images if image.get("file_name") is not None]
    sizes = _read_sizes(folder, [image.get("file_name") for image in listed])
    for image in listed:
        name = image.get("file_name")
        size = sizes[name]
        if isinstance(size, str):
            problems.error(image.item, "file_name", size, file=name)
            continue
        for field, actual in zip(("width", "height"), size, strict=True):
            stated = image.get(field)
            if stated is not None and int(stated) != actual:
                message = f"{field} {int(stated)} in {ANNOTATIONS_FILE} differs from the file's {actual} pixels"
                problems.error(image.item, field, message, file=name)
    _report_unlisted_files(folder, {_normalised_file_name(image.get("file_name")) for image in listed}, problems)


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
            problems.warning("image file", "file_name", f"image file is not listed in {ANNOTATIONS_FILE}", file=name)


# ---------------------------------------------------------------------------------------------
# Annotations


def _check_annotations(annotations: list[_Record], images: dict[int, _Record], problems: _Problems) -> list[_Record]:
    """Check what ties annotations to images; return those on a listed image."""
    on_images = []
    for annotation in annotations:
        _warn_repeated_notes(annotation, problems)
        image_id = annotation.get("image_id")
        if image_id is None:
            continue
        if int(image_id) not in images:
            problems.error(annotation.item, "image_id", f"refers to image id {int(image_id)}, which is not in images")
            continue
        _check_box_inside_image(annotation, images[int(image_id)], problems)
        on_images.append(annotation)
    _report_duplicates(annotations, "id", "annotation id", problems)
    return on_images


def _warn_repeated_notes(annotation: _Record, problems: _Problems) -> None:
    # Read notes the model rejected too: a repeat is worth knowing even when a note is wrong.
    listed = annotation.reach("notes")
    notes = [note for note in listed if isinstance(note, str)] if isinstance(listed, list) else []
    for note, times in Counter(notes).items():
        if times > 1:
            problems.warning(annotation.item, "notes", f"note {note!r} is listed {times} times")


def _check_box_inside_image(annotation: _Record, image: _Record, problems: _Problems) -> None:
    box, width, height = annotation.get("bbox"), image.get("width"), image.get("height")
    if box is None or width is None or height is None:
        return
    x, y, w, h = box
    t = BOX_TOLERANCE_PX
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        problems.error(
            annotation.item,
            "bbox",
            f"box [x={x:g}, y={y:g}, w={w:g}, h={h:g}] extends outside the {width:g}x{height:g} image",
        )


# ---------------------------------------------------------------------------------------------
# Femoral heads per radiograph


def _check_heads_per_image(images: dict[int, _Record], annotations: list[_Record], problems: _Problems) -> None:
    heads: dict[int, list[_Record]] = defaultdict(list)
    for annotation in annotations:
        heads[int(annotation.get("image_id"))].append(annotation)
    for image_id, image in images.items():
        on_image = heads.get(image_id, [])
        if not on_image:
            problems.warning(image.item, "annotations", "radiograph has no femoral-head annotation")
            continue
        if len(on_image) > 2:
            problems.error(
                image.item,
                "annotations",
                f"{len(on_image)} femoral heads annotated ({_items(on_image)}); a radiograph shows at most two",
            )
        _check_sides_on_image(image, on_image, problems)


def _check_sides_on_image(image: _Record, heads: list[_Record], problems: _Problems) -> None:
    by_side: dict[str, list[_Record]] = defaultdict(list)
    for head in heads:
        if head.get("side") is not None:
            by_side[head.get("side")].append(head)
    for side, same in by_side.items():
        if len(same) > 1:
            problems.error(
                image.item,
                "side",
                f"{len(same)} femoral heads labelled {side!r} ({_items(same)}); each side appears at most once",
            )
    right, left = by_side.get(SIDES[1], []), by_side.get(SIDES[0], [])
    if len(right) == 1 and len(left) == 1 and _centre_x(right[0]) > _centre_x(left[0]):
        problems.error(
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


def _check_splits(document: _Document, images: dict[int, _Record], problems: _Problems) -> None:
    split_of = _splits_of_subjects(document, problems)
    radiographs = Counter(image.get("subject_id") for image in images.values() if image.get("subject_id") is not None)
    for subject, names in split_of.items():
        if len(names) > 1:
            problems.error(
                f"subject {subject}",
                "splits",
                f"subject is in {len(names)} splits ({' and '.join(names)}); all of a subject's "
                "radiographs must stay in one split",
            )
        if subject not in radiographs:
            message = f"subject is listed in split {names[0]} but has no radiograph"
            problems.warning(f"subject {subject}", f"splits.{names[0]}", message)
    for subject, count in radiographs.items():
        if subject not in split_of:
            message = f"subject is in no split: its {count} radiograph(s) are used by neither training nor testing"
            problems.warning(f"subject {subject}", "subject_id", message)


def _splits_of_subjects(document: _Document, problems: _Problems) -> dict[str, list[str]]:
    """The splits that list each subject; a subject listed twice in one split is warned about."""
    split_of: dict[str, list[str]] = defaultdict(list)
    splits = document.reach("splits")
    for name in splits if isinstance(splits, dict) else {}:
        for subject, times in Counter(document.get("splits", name) or []).items():
            split_of[subject].append(name)
            if times > 1:
                problems.warning(
                    f"subject {subject}", f"splits.{name}", f"subject is listed {times} times in split {name}"
                )
    return split_of
