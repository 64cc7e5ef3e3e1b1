"""Typed model of a data set folder: ``annotations.json`` (COCO-style) beside the image files.

The phantom writes this format and everything downstream reads it; a hospital exports its own
radiographs into it (docs/dataset.md). ``avn.dataset.check`` validates a folder before use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from avn.vocabulary import SPLITS

ANNOTATIONS_FILE = "annotations.json"
FORMAT_VERSION = "1.0"
FEMORAL_HEAD_CATEGORY = {"id": 1, "name": "femoral_head", "supercategory": "hip"}

View = Literal["AP", "FL"]
Side = Literal["left", "right"]
Stage = Literal["absence", "II", "III", "IV"]


class ImageRecord(BaseModel):
    """One radiograph."""

    id: int
    file_name: str
    width: int
    height: int
    subject_id: str
    view: View
    pixel_spacing: tuple[float, float] = Field(description="(row, column) spacing in mm")


class FemoralHeadAnnotation(BaseModel):
    """One femoral head on one radiograph."""

    id: int
    image_id: int
    category_id: int = FEMORAL_HEAD_CATEGORY["id"]
    bbox: tuple[float, float, float, float] = Field(description="COCO [x, y, width, height] in pixels")
    area: float = 0.0
    iscrowd: int = 0
    side: Side
    stage: Stage
    notes: list[str] = Field(default_factory=list)
    typical: bool = False

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)


class DatasetInfo(BaseModel):
    description: str = ""
    version: str = FORMAT_VERSION
    generator: str = ""
    seed: int | None = None


class Dataset(BaseModel):
    """The whole ``annotations.json``."""

    info: DatasetInfo = Field(default_factory=DatasetInfo)
    categories: list[dict] = Field(default_factory=lambda: [dict(FEMORAL_HEAD_CATEGORY)])
    images: list[ImageRecord] = Field(default_factory=list)
    annotations: list[FemoralHeadAnnotation] = Field(default_factory=list)
    splits: dict[str, list[str]] = Field(default_factory=lambda: {name: [] for name in SPLITS})

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
