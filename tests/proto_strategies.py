"""Hypothesis strategies for any protobuf message, made from its descriptor.

Every field of a message gets values of its wire type (numbers near their bounds included, any
enum number, text, bytes, nested messages to a bounded depth, repeated and map fields, one
member of each oneof), so that a field added to a .proto is covered without a change here.
``hints`` name fields (by field name, wherever they appear) whose values should often be
meaningful ones, such as ids the server knows; they are mixed with arbitrary values of the type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

Hints = Mapping[str, st.SearchStrategy[Any]]
EMPTY: Hints = MappingProxyType({})

_T = FieldDescriptor

# Text that protobuf can encode (no lone surrogates), short as a rule.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


def _integers(bits: int, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = sorted({low, high, 0, 1, min(high, 2**31), max(low, -1)})
    return st.one_of(st.sampled_from(edges), st.integers(0, 1_000), st.integers(low, high))


_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    _T.TYPE_DOUBLE: st.floats(),
    _T.TYPE_FLOAT: st.floats(width=32),
    _T.TYPE_BOOL: st.booleans(),
    _T.TYPE_STRING: TEXT,
    _T.TYPE_BYTES: st.binary(max_size=64),
    **{t: _integers(32, True) for t in (_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32)},
    **{t: _integers(64, True) for t in (_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64)},
    **{t: _integers(32, False) for t in (_T.TYPE_UINT32, _T.TYPE_FIXED32)},
    **{t: _integers(64, False) for t in (_T.TYPE_UINT64, _T.TYPE_FIXED64)},
}


def _value(field: FieldDescriptor, hints: Hints, depth: int) -> st.SearchStrategy[Any]:
    """Values of one element of the field (one item of a repeated field)."""
    if field.type == _T.TYPE_MESSAGE:
        return messages(field.message_type, hints, depth - 1)
    if field.type == _T.TYPE_ENUM:
        # proto3 enums are open: any int32 is valid on the wire.
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _integers(32, True))
    base = _SCALARS[field.type]
    # "Message.field" first: one name may be a string in one message and a number in another
    hint = hints.get(f"{field.containing_type.name}.{field.name}", hints.get(field.name))
    return base if hint is None else st.one_of(hint, hint, base)


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == _T.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _field(field: FieldDescriptor, hints: Hints, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(field):
        entry = field.message_type.fields_by_name
        return st.dictionaries(
            _value(entry["key"], hints, depth), _value(entry["value"], hints, depth), max_size=4
        )
    if field.is_repeated:
        if field.type == _T.TYPE_MESSAGE and depth <= 0:
            return st.just([])
        return st.lists(_value(field, hints, depth), max_size=6)
    return _value(field, hints, depth)


def _setter(field: FieldDescriptor) -> Callable[[Message, Any], None]:
    name = field.name
    if _is_map(field):
        if field.message_type.fields_by_name["value"].type == _T.TYPE_MESSAGE:

            def update(m: Message, v: dict[Any, Message]) -> None:
                for key, item in v.items():
                    getattr(m, name)[key].CopyFrom(item)

            return update
        return lambda m, v: getattr(m, name).update(v)
    if field.is_repeated:
        return lambda m, v: getattr(m, name).extend(v)
    if field.type == _T.TYPE_MESSAGE:
        return lambda m, v: getattr(m, name).CopyFrom(v)
    return lambda m, v: setattr(m, name, v)


def messages(
    descriptor: Descriptor, hints: Hints = EMPTY, depth: int = 3
) -> st.SearchStrategy[Any]:
    """Messages of ``descriptor``'s type with any subset of their fields set."""
    cls = GetMessageClass(descriptor)
    if depth <= 0:
        return st.just(cls())
    plain = [f for f in descriptor.fields if f.containing_oneof is None or _synthetic(f)]
    parts: dict[str, st.SearchStrategy[Any]] = {
        f.name: st.none() | _field(f, hints, depth) for f in plain
    }
    for oneof in descriptor.oneofs:
        if _synthetic(oneof.fields[0]):
            continue
        parts[f"oneof:{oneof.name}"] = st.none() | st.one_of(
            [st.tuples(st.just(f.name), _field(f, hints, depth)) for f in oneof.fields]
        )
    setters = {f.name: _setter(f) for f in descriptor.fields}

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for key, value in values.items():
            if value is None:
                continue
            if key.startswith("oneof:"):
                key, value = value
            setters[key](message, value)
        return message

    return st.fixed_dictionaries(parts).map(build)


def _synthetic(field: FieldDescriptor) -> bool:
    """A proto3 ``optional`` field: its oneof is only how presence is encoded."""
    oneof = field.containing_oneof
    return oneof is not None and len(oneof.fields) == 1 and oneof.name == f"_{field.name}"
