"""One result schema: the dataclasses of avn.pipeline.results are the definition; the REST app's
JSON schema (its OpenAPI document) and the avn.v1 protobuf messages must carry exactly the same
fields, with the same shape (scalar, nested message, repeated). The comparison is shown to fail on
a field that exists in one of the three only, and the generic protobuf mapping is shown to round-trip."""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass, make_dataclass
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor

from avn.dataset.images import DicomSource
from avn.pipeline.backend import ModelInfo
from avn.pipeline.results import (
    Box,
    DiagnoseOptions,
    Diagnosis,
    FemoralHead,
    ImagePayload,
    LabelProbability,
    ModelVersion,
    Note,
    OperatingPoint,
    SideDiagnosis,
    SkippedRadiograph,
    StepTimings,
    StudyDiagnosis,
    StudyRadiograph,
    StudyRequest,
    View,
)
from gateway import proto
from gateway.grpc_server import diagnose_request_from_proto, study_request_from_proto
from gateway.proto_mapping import FIELD_NAMES, from_proto, message_name, proto_field_name, to_proto
from gateway.rest import create_app
from gateway.rest.models import model_name

pb = proto.load().messages
RESULTS = (
    Diagnosis,
    FemoralHead,
    Box,
    View,
    Note,
    LabelProbability,
    ModelVersion,
    StepTimings,
    StudyDiagnosis,
    SideDiagnosis,
    SkippedRadiograph,
    StudyRadiograph,
    ModelInfo,
    DicomSource,
    OperatingPoint,
)
SCALAR, MESSAGE, REPEATED = "scalar", "message", "repeated"


@pytest.fixture(scope="module")
def rest_schemas() -> dict[str, Any]:
    """The JSON schemas of the REST app's OpenAPI document, by model name."""
    return create_app(lambda: None).openapi()["components"]["schemas"]


# ---------------------------------------------------------------- the comparison


def schema_drift(cls: type, rest_schema: dict[str, Any], message: Descriptor) -> list[str]:
    """Every field that is not in all three of dataclass ``cls``, its REST JSON schema and its
    protobuf message, or that has another shape in one of them; empty when they agree."""
    shapes = {
        "dataclass": _dataclass_shapes(cls),
        "REST schema": {name: _json_shape(prop) for name, prop in rest_schema.get("properties", {}).items()},
        "protobuf message": _message_shapes(cls, message),
    }
    problems = []
    for name in sorted(set().union(*shapes.values())):
        found = {where: shape.get(name) for where, shape in shapes.items()}
        missing = [where for where, shape in found.items() if shape is None]
        if missing:
            problems.append(f"{cls.__name__}.{name}: missing from the {' and the '.join(missing)}")
        elif len(set(found.values())) > 1:
            problems.append(f"{cls.__name__}.{name}: shapes differ: {found}")
    return problems


def _dataclass_shapes(cls: type) -> dict[str, str]:
    hints = typing.get_type_hints(cls)
    return {field.name: _type_shape(hints[field.name]) for field in fields(cls)}


def _type_shape(kind: Any) -> str:
    arguments = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is tuple:
        return REPEATED
    if is_dataclass(kind):
        return MESSAGE
    if len(arguments) == 1:  # X | None
        return _type_shape(arguments[0])
    return SCALAR


def _json_shape(prop: dict[str, Any]) -> str:
    alternatives = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    if alternatives[0].get("type") == "array":
        return REPEATED
    return MESSAGE if "$ref" in alternatives[0] else SCALAR


def _message_shapes(cls: type, message: Descriptor) -> dict[str, str]:
    # Named as the dataclass names them, so a declared rename is no drift.
    dataclass_names = {proto_field_name(cls, name): name for name in _dataclass_shapes(cls)}
    return {dataclass_names.get(field.name, field.name): _proto_shape(field) for field in message.fields}


def _proto_shape(field: Any) -> str:
    if field.is_repeated:
        return REPEATED
    return MESSAGE if field.message_type is not None else SCALAR


# ---------------------------------------------------------------- the three agree


@pytest.mark.parametrize("cls", RESULTS, ids=lambda cls: cls.__name__)
def test_dataclass_rest_schema_and_proto_message_have_the_same_fields(cls: type, rest_schemas: dict) -> None:
    message = getattr(pb, message_name(cls)).DESCRIPTOR
    assert schema_drift(cls, rest_schemas[model_name(cls)], message) == []


@pytest.mark.parametrize("cls", RESULTS, ids=lambda cls: cls.__name__)
def test_nested_results_are_the_same_types_in_the_rest_schema_and_the_proto(cls: type, rest_schemas: dict) -> None:
    message = getattr(pb, message_name(cls)).DESCRIPTOR
    properties = rest_schemas[model_name(cls)]["properties"]
    for name, nested in _nested_dataclasses(cls).items():
        assert message.fields_by_name[name].message_type.name == message_name(nested), f"{cls.__name__}.{name}"
        assert _ref_of(properties[name]).endswith(f"/{model_name(nested)}"), f"{cls.__name__}.{name}"


def test_every_result_reachable_from_the_responses_is_checked() -> None:
    reachable, todo = set(), [Diagnosis, StudyDiagnosis]
    while todo:
        cls = todo.pop()
        if cls not in reachable:
            reachable.add(cls)
            todo.extend(_nested_dataclasses(cls).values())
    assert reachable <= set(RESULTS)


def test_descriptions_reach_the_openapi_document(rest_schemas: dict) -> None:
    head = rest_schemas[model_name(FemoralHead)]["properties"]
    assert head["cam_box"]["description"] == "The square crop the classifiers saw."
    assert "Base64" in head["cam_png"]["description"]


def _nested_dataclasses(cls: type) -> dict[str, type]:
    nested = {}
    for name, kind in typing.get_type_hints(cls).items():
        candidates = [kind, *typing.get_args(kind)]
        found = [c for c in candidates if is_dataclass(c)]
        if found:
            nested[name] = found[0]
    return nested


def _ref_of(prop: dict[str, Any]) -> str:
    # An optional message (X | None) is anyOf [its $ref, null].
    alternatives = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    return alternatives[0].get("$ref") or alternatives[0].get("items", {}).get("$ref", "")


# ---------------------------------------------------------------- the comparison can fail


def test_a_dataclass_field_missing_from_the_rest_schema_and_the_proto_is_reported(rest_schemas: dict) -> None:
    box_with_z = make_dataclass("Box", [(f.name, float) for f in fields(Box)] + [("z", float)])
    problems = schema_drift(box_with_z, rest_schemas["BoxResult"], pb.Box.DESCRIPTOR)
    assert problems == ["Box.z: missing from the REST schema and the protobuf message"]


def test_a_rest_field_missing_from_the_dataclass_and_the_proto_is_reported(rest_schemas: dict) -> None:
    schema = rest_schemas["BoxResult"]
    with_w = {**schema, "properties": {**schema["properties"], "w": {"type": "number"}}}
    assert schema_drift(Box, with_w, pb.Box.DESCRIPTOR) == [
        "Box.w: missing from the dataclass and the protobuf message"
    ]


def test_a_proto_field_missing_from_the_dataclass_and_the_rest_schema_is_reported(rest_schemas: dict) -> None:
    message = _box_message_with(extra_field="z")
    assert schema_drift(Box, rest_schemas["BoxResult"], message) == [
        "Box.z: missing from the dataclass and the REST schema"
    ]


def test_a_field_of_another_shape_is_reported(rest_schemas: dict) -> None:
    schema = rest_schemas["BoxResult"]
    x0_as_array = {**schema, "properties": {**schema["properties"], "x0": {"type": "array", "items": {}}}}
    (problem,) = schema_drift(Box, x0_as_array, pb.Box.DESCRIPTOR)
    assert problem.startswith("Box.x0: shapes differ")


def _box_message_with(extra_field: str) -> Descriptor:
    """``avn.v1.Box`` plus one float field, in a pool of its own."""
    file = descriptor_pb2.FileDescriptorProto(name="drift.proto", package="drift", syntax="proto3")
    box = file.message_type.add(name="Box")
    for number, name in enumerate([*(f.name for f in pb.Box.DESCRIPTOR.fields), extra_field], start=1):
        box.field.add(
            name=name,
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool.FindMessageTypeByName("drift.Box")


# ---------------------------------------------------------------- the generic protobuf mapping


def _diagnosis(overlay: bytes | None, source: DicomSource | None = None) -> Diagnosis:
    # Values exact in float32, so that the round trip compares equal.
    probabilities = (LabelProbability("AP", 0.75), LabelProbability("FL", 0.25))
    head = FemoralHead(
        box=Box(1.0, 2.5, 3.0, 4.0),
        score=0.5,
        side="left",
        side_probability=0.75,
        side_corrected=True,
        stage_probabilities=probabilities,
        stage="II",
        stage_probability=0.5,
        presence="presence",
        presence_probability=0.5,
        collapse="pre-collapse",
        collapse_probability=0.25,
        notes=(Note("sclerosis", "II", 0.5, 0.25, False),),
        cam_png=b"\x89PNG",
        cam_stage="II",
        cam_box=Box(0.0, 0.0, 0.0, 0.0),
        view_probabilities=probabilities,
        low_confidence=True,
        low_confidence_reasons=("low detector score",),
    )
    return Diagnosis(
        "r1", 100, 200, View("AP", 0.75, probabilities), (head,), overlay, (ModelVersion("view", "1"),), False,
        StepTimings(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 21.0), 0.5, source,
        operating_point=OperatingPoint("sensitive", 0.25, 0.96875, 0.5),
    )  # fmt: skip


@pytest.mark.parametrize("overlay", [None, b"\x00png"])
@pytest.mark.parametrize("source", [None, DicomSource("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.1")])
def test_a_diagnosis_round_trips_through_its_message(overlay: bytes | None, source: DicomSource | None) -> None:
    diagnosis = _diagnosis(overlay, source)
    message = to_proto(diagnosis, pb)
    assert isinstance(message, pb.DiagnoseResponse)
    assert message.heads[0].HasField("cam_box")  # an all-zero box is still sent
    assert from_proto(Diagnosis, message) == diagnosis


def test_a_study_round_trips_through_its_message() -> None:
    study = StudyDiagnosis(
        "s1",
        (SideDiagnosis("left", "II", "presence", "pre-collapse", 0.5, 0, (0, 1)),),
        (StudyRadiograph(0, _diagnosis(None)),),
        (SkippedRadiograph(1, "no femoral head"),),
        (ModelVersion("view", "1"),),
        12.5,
    )
    assert from_proto(StudyDiagnosis, to_proto(study, pb)) == study


def test_requests_map_with_their_declared_exceptions() -> None:
    options = pb.DiagnoseOptions(cam_stage="IV", note_threshold=0.0, operating_point="specific")
    single = pb.DiagnoseRequest(image=b"png", media_type="image/png", include_overlay=True, options=options)
    request = diagnose_request_from_proto(single)
    assert request.payload == ImagePayload(b"png", "image/png")
    assert request.options == DiagnoseOptions(
        include_overlay=True, cam_stage="IV", note_threshold=0.0, operating_point="specific"
    )
    study = study_request_from_proto(pb.StudyRequest(radiographs=[pb.Radiograph(image=b"a"), pb.Radiograph()]))
    assert study == StudyRequest((ImagePayload(b"a"), ImagePayload(b"")), DiagnoseOptions())
    assert FIELD_NAMES[StudyRequest] == {"payloads": "radiographs"}


def test_a_dataclass_field_without_a_namesake_fails_loudly() -> None:
    box_with_z = make_dataclass("Box", [(f.name, float) for f in fields(Box)] + [("z", float)])
    with pytest.raises(KeyError, match="avn.v1.Box has no field 'z'"):
        to_proto(box_with_z(0.0, 0.0, 1.0, 1.0, 2.0), pb)
