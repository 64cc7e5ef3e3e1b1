"""Typed model of a data set folder: ``annotations.json`` (COCO-style) beside the image files.

The phantom writes this format and everything downstream reads it; a hospital exports its own
radiographs into it (docs/dataset.md). The models are the one statement of the schema: field
types, label sets (from ``avn.vocabulary``) and every rule about a single value or record.
``avn.dataset.check`` validates a folder with them and adds what spans records and files.

Each rule's message is written for the person who exported the set, since ``avn data check``
shows it as is ("unknown view 'LAT'; expected one of AP, FL").
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticKnownError

from avn.dataset.images import IMAGE_SUFFIXES
from avn.vocabulary import NOTE_STAGE, NOTES, SIDES, SPLITS, STAGES, VIEWS

ANNOTATIONS_FILE = "annotations.json"
FORMAT_VERSION = "1.0"
FEMORAL_HEAD_CATEGORY = {"id": 1, "name": "femoral_head", "supercategory": "hip"}
_FEMORAL_HEAD = f"{FEMORAL_HEAD_CATEGORY['id']} {FEMORAL_HEAD_CATEGORY['name']!r}"
# The error type of a label outside its vocabulary; its message is written for people as is.
UNKNOWN_LABEL = "unknown_label"


# ---------------------------------------------------------------------------------------------
# Value types


def _refusing_text_and_booleans(error_type: str) -> BeforeValidator:
    # Lax pydantic reads "200" as 200, "0.15" as 0.15 and true as 1; in an exported file each is a
    # mistake. It also reads 12.0 as 12, which JSON writers emit for whole numbers; that we keep.
    def refuse(value: Any) -> Any:
        if isinstance(value, (str, bool)):
            raise PydanticKnownError(error_type)
        return value

    return BeforeValidator(refuse)


Integer = Annotated[int, _refusing_text_and_booleans("int_type")]
Number = Annotated[float, _refusing_text_and_booleans("float_type")]


def one_of(kind: str, labels: tuple[str, ...]) -> Any:
    """A string from ``labels``: an enum in the JSON schema, "unknown <kind> ..." when it is not one."""

    def name_the_label(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            if not isinstance(value, str):
                raise PydanticKnownError("string_type") from None
            raise PydanticCustomError(
                UNKNOWN_LABEL,
                "unknown {kind} {value}; expected one of {allowed}",
                {"kind": kind, "value": repr(value), "allowed": ", ".join(labels)},
            ) from None

    return Annotated[Literal[labels], WrapValidator(name_the_label)]


View = one_of("view", VIEWS)
Side = one_of("side", SIDES)
Stage = one_of("stage", STAGES)
Note = one_of("note", NOTES)
Split = one_of("split", SPLITS)


# ---------------------------------------------------------------------------------------------
# Rules on one value


def _relative_image_path(name: str) -> str:
    if not name.strip():
        raise ValueError("file_name is empty")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"file_name {name!r} must be a path relative to the data-set folder, inside it")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(
            f"unsupported image type {path.suffix or '(no suffix)'!r} in {name!r}; "
            "name DICOM files *.dcm and PNG files *.png"
        )
    return name


def _not_blank(subject: str) -> str:
    if not subject.strip():
        raise ValueError("subject_id is empty")
    return subject


def _positive_finite_spacing(spacing: tuple[float, float]) -> tuple[float, float]:
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(f"pixel spacing must be positive and finite, got {list(spacing)} mm")
    return spacing


def _finite_non_empty_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    _, _, w, h = box
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"box has non-finite values {list(box)}")
    if w <= 0 or h <= 0:
        raise ValueError(f"degenerate box: width and height must be > 0, got w={w:g}, h={h:g}")
    return box


def _femoral_head_category_id(category_id: int) -> int:
    if category_id != FEMORAL_HEAD_CATEGORY["id"]:
        raise ValueError(f"unknown category_id {category_id}; femoral heads use category {FEMORAL_HEAD_CATEGORY['id']}")
    return category_id


def _not_crowd(iscrowd: int) -> int:
    if iscrowd != 0:
        raise ValueError(f"iscrowd must be 0 (each femoral head is one object), got {iscrowd}")
    return iscrowd


def _femoral_head_category_listed(categories: list[Category]) -> list[Category]:
    if not any(category.id == FEMORAL_HEAD_CATEGORY["id"] for category in categories):
        raise ValueError(f"category {_FEMORAL_HEAD} is missing")
    return categories


# ---------------------------------------------------------------------------------------------
# Records


class ImageRecord(BaseModel):
    """One radiograph."""

    id: Integer
    file_name: Annotated[str, AfterValidator(_relative_image_path)] = Field(
        description="path of the image file relative to the data-set folder"
    )
    width: Annotated[Integer, Field(gt=0)]
    height: Annotated[Integer, Field(gt=0)]
    subject_id: Annotated[str, AfterValidator(_not_blank)]
    view: View
    pixel_spacing: Annotated[tuple[Number, Number], AfterValidator(_positive_finite_spacing)] = Field(
        description="(row, column) spacing in mm"
    )
    prosthetic_heads: list[Annotated[tuple[Number, Number, Number, Number], AfterValidator(_finite_non_empty_box)]] = (
        Field(
            default_factory=list,
            description="COCO [x, y, width, height] of each hip prosthesis's metal head: not a femoral head, "
            "a second detector class so that metal is never answered as one (optional)",
        )
    )

    def prosthetic_heads_xyxy(self) -> list[tuple[float, float, float, float]]:
        return [(x, y, x + w, y + h) for x, y, w, h in self.prosthetic_heads]


class FemoralHeadAnnotation(BaseModel):
    """One femoral head on one radiograph."""

    id: Integer
    image_id: Integer
    category_id: Annotated[Integer, AfterValidator(_femoral_head_category_id)] = FEMORAL_HEAD_CATEGORY["id"]
    bbox: Annotated[tuple[Number, Number, Number, Number], AfterValidator(_finite_non_empty_box)] = Field(
        description="COCO [x, y, width, height] in pixels"
    )
    area: Annotated[Number, Field(ge=0, allow_inf_nan=False)] = 0.0
    iscrowd: Annotated[Integer, AfterValidator(_not_crowd)] = 0
    side: Side
    stage: Stage
    notes: list[Note] = Field(default_factory=list)
    typical: StrictBool = False

    @field_validator("notes")
    @classmethod
    def _notes_of_own_stage(cls, notes: list[str], info: ValidationInfo) -> list[str]:
        stage = info.data.get("stage")  # absent when the stage itself was rejected
        strays = [note for note in dict.fromkeys(notes) if stage is not None and NOTE_STAGE[note] != stage]
        if strays:
            owners = ", ".join(f"note {note!r} belongs to stage {NOTE_STAGE[note]}" for note in strays)
            empty = f" ({stage} has no notes)" if stage not in NOTE_STAGE.values() else ""
            raise ValueError(f"{owners}, but the annotation's stage is {stage}{empty}")
        return notes

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)


class Category(BaseModel):
    """A COCO category; the format has exactly one, the femoral head."""

    id: Integer
    name: str
    supercategory: str = ""

    @model_validator(mode="after")
    def _is_the_femoral_head(self) -> Category:
        if (self.id, self.name) != (FEMORAL_HEAD_CATEGORY["id"], FEMORAL_HEAD_CATEGORY["name"]):
            raise ValueError(f"unknown category {self.id} {self.name!r}; the only category is {_FEMORAL_HEAD}")
        return self


class DatasetInfo(BaseModel):
    description: str = ""
    version: str = FORMAT_VERSION
    generator: str = ""
    seed: Integer | None = None


class Dataset(BaseModel):
    """The whole ``annotations.json``."""

    info: DatasetInfo = Field(default_factory=DatasetInfo)
    categories: Annotated[list[Category], AfterValidator(_femoral_head_category_listed)] = Field(
        default_factory=lambda: [Category(**FEMORAL_HEAD_CATEGORY)]
    )
    images: list[ImageRecord]
    annotations: list[FemoralHeadAnnotation]
    splits: dict[Split, list[str]] = Field(description="split name -> subject ids")

    def split_of_subject(self) -> dict[str, str]:
        return {subject: split for split, subjects in self.splits.items() for subject in subjects}

    def annotations_of(self, image_id: int) -> list[FemoralHeadAnnotation]:
        return [a for a in self.annotations if a.image_id == image_id]

    def images_in_split(self, split: str) -> list[ImageRecord]:
        subjects = set(self.splits.get(split, []))
        return [image for image in self.images if image.subject_id in subjects]


def load_dataset(folder: str | Path) -> Dataset:
    """Read ``annotations.json`` of a data set folder (validate it first with ``avn data check``)."""
    path = Path(folder) / ANNOTATIONS_FILE
    return Dataset.model_validate(json.loads(path.read_text()))


def save_dataset(dataset: Dataset, folder: str | Path) -> Path:
    path = Path(folder) / ANNOTATIONS_FILE
    path.write_text(json.dumps(dataset.model_dump(mode="json"), indent=1))
    return path
