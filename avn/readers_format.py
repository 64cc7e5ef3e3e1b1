"""The reader-study CSV files: one definition shared by `avn readers` (analysis), the web app's
second-opinion export and the `--simulate` demo. docs/readers.md describes the same columns.

Three files, all UTF-8 CSV with a header row, one row per femoral head (a head is the pair
``case_id`` + ``side``; ``case_id`` names one radiograph, e.g. its data-set image id or file name):

* truth:   ``case_id,side,stage``
* reader:  ``reader,case_id,side,stage,seconds,assisted``
  ``assisted`` is ``no`` for a read made without the system and ``yes`` for one made with it (in
  the web app's second-opinion mode: the first read, then the final read after the reveal);
  ``seconds`` is the reading time of that read for the radiograph, empty when not measured.
* model:   ``case_id,side,stage,p_absence,p_II,p_III,p_IV``

Sides and stages are the vocabulary's words (``left``/``right``; ``absence``/``II``/``III``/``IV``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from avn.vocabulary import SIDES, STAGES

TRUTH_COLUMNS = ("case_id", "side", "stage")
READER_COLUMNS = ("reader", "case_id", "side", "stage", "seconds", "assisted")
MODEL_COLUMNS = ("case_id", "side", "stage", *(f"p_{stage}" for stage in STAGES))


class ReaderFormatError(ValueError):
    """A reader-study CSV that does not follow the format; the message names file, row and column."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    case_id: str = Field(min_length=1)
    side: str
    stage: str

    @field_validator("side")
    @classmethod
    def _known_side(cls, value: str) -> str:
        if value not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}")
        return value

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        if value not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}")
        return value

    @property
    def head(self) -> tuple[str, str]:
        return (self.case_id, self.side)


class TruthRow(_Row):
    pass


class ReaderRow(_Row):
    reader: str = Field(min_length=1)
    seconds: float | None = Field(default=None, ge=0)
    assisted: Literal["no", "yes"] = "no"

    @field_validator("seconds", mode="before")
    @classmethod
    def _empty_is_unmeasured(cls, value: object) -> object:
        return None if value == "" else value


class ModelRow(_Row):
    p_absence: float = Field(ge=0, le=1)
    p_II: float = Field(ge=0, le=1)
    p_III: float = Field(ge=0, le=1)
    p_IV: float = Field(ge=0, le=1)

    def probabilities(self) -> list[float]:
        return [getattr(self, f"p_{stage}") for stage in STAGES]


def read_truth(path: Path) -> list[TruthRow]:
    return _read(path, TruthRow, TRUTH_COLUMNS)


def read_reader(path: Path) -> list[ReaderRow]:
    return _read(path, ReaderRow, READER_COLUMNS)


def read_model(path: Path) -> list[ModelRow]:
    return _read(path, ModelRow, MODEL_COLUMNS)


def write_rows(path: Path, rows: Iterable[BaseModel], columns: tuple[str, ...]) -> None:
    path.write_text(rows_to_csv(rows, columns), encoding="utf-8")


def rows_to_csv(rows: Iterable[BaseModel], columns: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = row.model_dump()
        writer.writerow({column: "" if values[column] is None else values[column] for column in columns})
    return out.getvalue()


def _read(path: Path, row_type: type[_Row], columns: tuple[str, ...]) -> list:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ReaderFormatError(f"{path}: cannot read ({error.strerror})") from error
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in columns if column not in (reader.fieldnames or [])]
    if missing:
        raise ReaderFormatError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(columns)}")
    rows, problems, seen = [], [], set()
    for line, record in enumerate(reader, start=2):
        try:
            row = row_type(**{column: record[column] for column in columns})
        except ValidationError as error:
            for issue in error.errors():
                field = ".".join(str(part) for part in issue["loc"]) or "row"
                problems.append(f"{path}: line {line}, column {field}: {issue['msg']}")
            continue
        key = (getattr(row, "reader", None), getattr(row, "assisted", None), row.head)
        if key in seen:
            problems.append(f"{path}: line {line}: head {row.case_id}/{row.side} appears twice")
        seen.add(key)
        rows.append(row)
    if problems:
        raise ReaderFormatError("\n".join(problems))
    if not rows:
        raise ReaderFormatError(f"{path}: no rows")
    return rows
