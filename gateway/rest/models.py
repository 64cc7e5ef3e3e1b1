"""The REST app's JSON bodies as pydantic models, for validation and the OpenAPI document at ``/docs``.

The result models are generated from the dataclasses of :mod:`avn.pipeline.results` (and
:class:`~avn.pipeline.backend.ModelInfo`), field by field, with the descriptions those dataclasses
give in their field metadata: one definition, no hand-written mirror to drift. In JSON a tuple is an
array and bytes are base64 text, as :func:`~avn.pipeline.results.to_json_dict` writes them; a
``None`` stays ``null``. The bodies with no dataclass behind them (health, case bank, errors) are
written here.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import Field as DataclassField
from dataclasses import fields, is_dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from avn.dataset.images import DicomSource
from avn.pipeline.backend import ModelInfo
from avn.pipeline.results import (
    DESCRIPTION,
    Box,
    Diagnosis,
    FemoralHead,
    LabelProbability,
    ModelVersion,
    Note,
    OperatingPoint,
    SideDiagnosis,
    SkippedRadiograph,
    StepTimings,
    StudyDiagnosis,
    StudyRadiograph,
    View,
)


class _Strict(BaseModel):
    # extra="forbid": a body with a field the model lacks fails loudly, not silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- generated from the dataclasses

# The model of a dataclass is named <dataclass>Result, except for these (the names clients and the
# OpenAPI document already know).
MODEL_NAMES: dict[type, str] = {
    Diagnosis: "DiagnosisResponse",
    StudyDiagnosis: "StudyResponse",
    ModelInfo: "ModelDescription",
}


def model_name(cls: type) -> str:
    return MODEL_NAMES.get(cls, f"{cls.__name__}Result")


@functools.cache  # one model per dataclass, shared wherever it is nested
def model_of(cls: type) -> type[BaseModel]:
    """The pydantic model of dataclass ``cls``'s JSON: every field required, as the JSON always has it."""
    hints = typing.get_type_hints(cls)
    definitions: dict[str, Any] = {
        field.name: (_json_type(hints[field.name]), _field_info(field, hints[field.name])) for field in fields(cls)
    }
    return create_model(model_name(cls), __base__=_Strict, __doc__=_docstring(cls), __module__=__name__, **definitions)


def _json_type(kind: Any) -> Any:
    """The type of a dataclass field's JSON value."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(lambda a, b: a | b, (_json_type(argument) for argument in arguments))
    if origin is tuple:
        return list[_json_type(arguments[0])]
    if kind is bytes:
        return str  # base64 text
    if is_dataclass(kind):
        return model_of(kind)
    return kind


def _field_info(field: DataclassField, kind: Any) -> Any:
    description = field.metadata.get(DESCRIPTION)
    if description and bytes in (kind, *typing.get_args(kind)):
        description = f"{description} Base64 in JSON."
    return Field(description=description)


def _docstring(cls: type) -> str | None:
    # A dataclass without a docstring gets its signature as __doc__: no description at all is better.
    doc = cls.__doc__ or ""
    return None if doc.startswith(f"{cls.__name__}(") else doc


BoxResult = model_of(Box)
LabelProbabilityResult = model_of(LabelProbability)
NoteResult = model_of(Note)
FemoralHeadResult = model_of(FemoralHead)
ViewResult = model_of(View)
ModelVersionResult = model_of(ModelVersion)
DicomSourceResult = model_of(DicomSource)
OperatingPointResult = model_of(OperatingPoint)
StepTimingsResult = model_of(StepTimings)
DiagnosisResponse = model_of(Diagnosis)
SideDiagnosisResult = model_of(SideDiagnosis)
SkippedRadiographResult = model_of(SkippedRadiograph)
StudyRadiographResult = model_of(StudyRadiograph)
StudyResponse = model_of(StudyDiagnosis)
ModelDescription = model_of(ModelInfo)


# ---------------------------------------------------------------- REST only


class HealthResponse(_Strict):
    status: str


class ReadinessResponse(_Strict):
    ready: bool


class WhoAmIResponse(_Strict):
    caller: str = Field(description="The id of the request's API key (`anonymous` when authentication is off).")
    authentication: str = Field(description="`api-key`, or `off` (development on loopback).")


class CaseSummary(_Strict):
    """One case of the bank, without its truth."""

    id: str = Field(description="The data-set image id; the case_id of the second-opinion export.")
    name: str = Field(description="The image's file name in the data set.")
    sides: list[str] = Field(description="The femoral heads to stage, left to right on the image.")


class CaseBankResponse(_Strict):
    available: bool
    source: str = Field(description="The name of the case bank's folder (AVN_CASE_BANK), not its path.")
    split: str = Field(description="E3, or all when the folder's E3 split is too small.")
    message: str = Field(description="Why the bank is empty; empty when it is not.")
    cases: list[CaseSummary]


class CaseHeadTruth(_Strict):
    side: str
    stage: str
    notes: list[str]
    box: BoxResult  # type: ignore[valid-type]  # generated above


class CaseTruthResponse(_Strict):
    """The ground truth of one case (the web app asks for it once the student has answered)."""

    id: str
    name: str
    subject_id: str
    view: str
    width: int
    height: int
    heads: list[CaseHeadTruth] = Field(description="Left to right on the image.")


class ErrorDetail(_Strict):
    code: str = Field(
        description="The error type: InvalidImage, InvalidArgument, PayloadTooLarge, NoFemoralHead, "
        "ModelUnavailable, DeadlineExceeded, Internal, Unauthenticated, Overloaded, ShuttingDown or RequestTimeout."
    )
    message: str
    request_id: str


class ErrorResponse(_Strict):
    error: ErrorDetail
