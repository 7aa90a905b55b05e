"""Protobuf messages as plain JSON values, read off their descriptors.

MessageToDict writes 64-bit integers as strings (proto3's JSON mapping, for JavaScript's sake) and
leaves out fields at their default; a script reading `flexnnctl --json` wants `"swaps": 3` and every
field present. Names are the proto's own (snake_case), enums by name, an unset sub-message null."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor


def message_dict(message) -> dict[str, Any]:
    """Every field of `message` under its proto name, numbers as numbers."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {key: _value(value_field, v) for key, v in value.items()}
        elif _is_repeated(field):
            out[field.name] = [_value(field, v) for v in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _value(field, value)
    return out


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_dict(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value  # a newer daemon's kind: its number
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.hex()
    return value


def _is_repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # newer protobuf, where `label` is gone
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and _is_repeated(field)
        and field.message_type.GetOptions().map_entry
    )
