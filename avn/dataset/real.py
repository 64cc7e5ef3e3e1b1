"""Real radiographs with hand-drawn femoral heads: the manifest both real sets share.

Two folders hold real radiographs, each with a ``manifest.json`` in this format: the check set
(``tests/data/real/``, run by ``avn realcheck``, never trained on) and the real training set
(``datasets/real-hips/``: its ``train`` radiographs are added to the phantom when the detector
trains, its ``validation`` ones are held out to measure it on real anatomy). Every file names its
source, licence and attribution; sources and licences are listed in ``docs/real-data.md``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST = "manifest.json"
# Beside the package (an editable install and the Docker image keep it there): training finds it
# from any working directory.
REAL_TRAINING_SET = Path(__file__).resolve().parents[2] / "datasets" / "real-hips"

Box = tuple[float, float, float, float]


class ManifestError(ValueError):
    """A real-radiograph manifest that cannot be read or does not describe its files."""


def _ordered(box: Box) -> Box:
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"box {box} is not x0 < x1, y0 < y1")
    return box


class AnnotatedHead(BaseModel):
    model_config = ConfigDict(extra="forbid")

    box: Box = Field(description="x0, y0, x1, y1 in the file's pixels")
    side: Literal["left", "right"] = Field(description="the patient's side")

    @field_validator("box")
    @classmethod
    def _box_ordered(cls, box: Box) -> Box:
        return _ordered(box)


class RealFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    kind: Literal["pelvis", "hip", "negative"]
    description: str
    heads: list[AnnotatedHead] = Field(default_factory=list)
    prostheses: list[Box] = Field(
        default_factory=list, description="boxes of prosthetic heads (the metal ball), in the file's pixels"
    )
    source: str
    licence: str
    attribution: str
    split: Literal["train", "validation"] | None = Field(
        default=None, description="in the real training set: trained on, or held out to measure the detector"
    )

    @field_validator("heads")
    @classmethod
    def _at_most_two(cls, heads: list[AnnotatedHead]) -> list[AnnotatedHead]:
        if len(heads) > 2:
            raise ValueError("a radiograph shows at most two femoral heads")
        return heads

    @field_validator("prostheses")
    @classmethod
    def _prostheses_ordered(cls, boxes: list[Box]) -> list[Box]:
        return [_ordered(box) for box in boxes]

    @property
    def is_negative(self) -> bool:
        return self.kind == "negative"

    def head_boxes(self) -> np.ndarray:
        return np.array([head.box for head in self.heads], dtype=np.float32).reshape(-1, 4)

    def prosthesis_boxes(self) -> np.ndarray:
        return np.array(self.prostheses, dtype=np.float32).reshape(-1, 4)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[RealFile]

    def of_split(self, split: str) -> list[RealFile]:
        return [entry for entry in self.files if entry.split == split]


def load_manifest(folder: Path) -> Manifest:
    """The manifest of a real-radiograph folder, checked against the files present."""
    path = folder / MANIFEST
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except OSError as error:
        raise ManifestError(f"{path}: cannot be read ({error.strerror or error})") from error
    except ValueError as error:
        raise ManifestError(f"{path}: {error}") from error
    for entry in manifest.files:
        if not (folder / entry.file).is_file():
            raise ManifestError(f"{path}: {entry.file} is listed but missing")
        if entry.is_negative == bool(entry.heads or entry.prostheses):
            raise ManifestError(
                f"{path}: {entry.file}: a negative control has no heads, a hip or pelvis has some (or a prosthesis)"
            )
    return manifest


def manifest_fingerprint(folder: Path) -> str:
    """SHA-256 of the manifest and every listed file's name and size: what a trained model records."""
    manifest = load_manifest(folder)
    digest = hashlib.sha256((folder / MANIFEST).read_bytes())
    for entry in manifest.files:
        digest.update(f"{entry.file}:{(folder / entry.file).stat().st_size}".encode())
    return digest.hexdigest()
