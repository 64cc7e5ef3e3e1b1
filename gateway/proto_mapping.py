"""Dataclasses ↔ ``avn.v1`` protobuf messages, by field name: the one conversion the gRPC servicer uses.

A dataclass field maps onto the message field of the same name: a nested dataclass onto a
sub-message, a tuple onto a repeated field, bytes, text, numbers and booleans as they are, an
``Enum`` by its value, and ``None`` leaves the field unset (proto3 then reads its default). Back
from a message, a field that is unset — or, without presence in proto3, at its default — becomes
``None`` where the dataclass allows it. A dataclass field without a namesake in the message raises
``KeyError`` rather than being dropped; ``tests/test_result_schema.py`` catches such drift first.

The true exceptions are spelled out here, not in per-message converters: the message names that
differ from the dataclass names (:data:`MESSAGE_NAMES`) and the fields named differently
(:data:`FIELD_NAMES`). Request fields the proto lays out elsewhere (``include_overlay`` beside the
options, the image beside the request) are passed in by the caller as ``given`` values.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any

from google.protobuf.message import Message

from avn.pipeline.backend import ModelInfo
from avn.pipeline.results import Diagnosis, ImagePayload, StudyDiagnosis, StudyRequest

# The message of a dataclass is its namesake, except for these.
MESSAGE_NAMES: dict[type, str] = {
    Diagnosis: "DiagnoseResponse",
    StudyDiagnosis: "StudyResponse",
    ModelInfo: "ModelDescription",
}
# Dataclass field -> message field, where the names differ.
FIELD_NAMES: dict[type, dict[str, str]] = {
    ImagePayload: {"data": "image"},
    StudyRequest: {"payloads": "radiographs"},
}


def message_name(cls: type) -> str:
    """The name of the ``avn.v1`` message that carries dataclass ``cls``."""
    return MESSAGE_NAMES.get(cls, cls.__name__)


def proto_field_name(cls: type, name: str) -> str:
    """The message field that carries field ``name`` of dataclass ``cls``."""
    return FIELD_NAMES.get(cls, {}).get(name, name)


# ---------------------------------------------------------------- dataclass -> message


def to_proto(value: Any, messages: types.ModuleType) -> Message:
    """Dataclass ``value`` as its message, a class of the generated module ``messages``."""
    message = getattr(messages, message_name(type(value)))()
    fill_message(message, value)
    return message


def fill_message(message: Message, value: Any) -> None:
    """Set every field of ``message`` from its namesake in dataclass ``value``."""
    for field in fields(value):
        _set_field(message, proto_field_name(type(value), field.name), getattr(value, field.name))


def _set_field(message: Message, name: str, value: Any) -> None:
    _descriptor_of(message, name)  # a field without a namesake fails even when its value is None
    if value is None:
        return  # unset: the receiver reads the proto3 default
    if is_dataclass(value):
        child = getattr(message, name)
        child.SetInParent()  # present even when every one of its fields is at its default
        fill_message(child, value)
    elif isinstance(value, (tuple, list)):
        _extend(getattr(message, name), value)
    else:
        setattr(message, name, _scalar(value))


def _extend(repeated: Any, items: tuple | list) -> None:
    for item in items:
        if is_dataclass(item):
            fill_message(repeated.add(), item)
        else:
            repeated.append(_scalar(item))


def _scalar(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


# ---------------------------------------------------------------- message -> dataclass


def from_proto(cls: type, message: Message, given: Mapping[str, Any] | None = None) -> Any:
    """Dataclass ``cls`` from ``message``; ``given`` supplies fields the message does not carry."""
    values = dict(given or {})
    hints = typing.get_type_hints(cls)
    for field in fields(cls):
        if field.init and field.name not in values:
            values[field.name] = _read_field(hints[field.name], message, proto_field_name(cls, field.name))
    return cls(**values)


def _read_field(kind: Any, message: Message, name: str) -> Any:
    _descriptor_of(message, name)  # a missing namesake fails with the message's name in the error
    value = getattr(message, name)
    optional = _optional_of(kind)
    if optional is not None:
        if not _is_given(message, name, value):
            return None
        kind = optional
    if typing.get_origin(kind) is tuple:
        item_kind = typing.get_args(kind)[0]
        return tuple(_read_value(item_kind, item) for item in value)
    return _read_value(kind, value)


def _read_value(kind: Any, value: Any) -> Any:
    if is_dataclass(kind):
        return from_proto(kind, value)
    if kind is float:
        return float(value)
    return value


def _optional_of(kind: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind):
        return next(argument for argument in typing.get_args(kind) if argument is not type(None))
    return None


def _is_given(message: Message, name: str, value: Any) -> bool:
    # A field with presence (a message, or a proto3 `optional` scalar) says whether it was set; a
    # plain proto3 scalar cannot, so its default ("" for a cam_stage) means "not given".
    if _descriptor_of(message, name).has_presence:
        return message.HasField(name)
    return bool(value)


def _descriptor_of(message: Message, name: str) -> Any:
    try:
        return message.DESCRIPTOR.fields_by_name[name]
    except KeyError:
        raise KeyError(f"{message.DESCRIPTOR.full_name} has no field {name!r}") from None
