"""One JSON codec for the store's records: every event class and `Program`.

It is derived from the types themselves, never from a list kept by hand: the
event classes are the members of the `hershy.domain.events.Event` union, and
a record's fields are read from its dataclass type hints. So an event class or
a field added later round-trips with no change here, as long as its fields are
made of what the codec knows: None, bool, int, float, str, enums (stored by
name), frozen dataclasses (nested), optionals and other unions, tuples, lists,
frozensets and dicts with string keys.

A stored record that lacks a field (written before the field existed) takes
the dataclass default; the store writes no field that holds its default (most of
a program's fields do, most of the time), so its rows are small and quick to read
back. A record with a field its class does not have, or a value of the wrong type,
is refused (`CodecError`): it was written by a newer Hershy or is damaged, and
guessing would lose what it says. Removing or retyping a field, or changing its
default (which old rows then take), therefore needs a migration of the stored rows.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from typing import Any

from hershy.domain import events as ev
from hershy.domain.model import Program

#: The key that names an event's class in its JSON object.
TYPE_KEY = "type"


class CodecError(ValueError):
    """A value this codec cannot write, or a stored record it cannot read back."""


def _members(union: Any) -> Iterator[type[Any]]:
    """The classes of a (possibly nested) union, in order."""
    if typing.get_origin(union) in (typing.Union, types.UnionType):
        for member in typing.get_args(union):
            yield from _members(member)
    else:
        yield union


def event_classes() -> dict[str, type[Any]]:
    """Every event class, by name: the members of `hershy.domain.events.Event`."""
    classes: dict[str, type[Any]] = {}
    for cls in _members(ev.Event):
        if not dataclasses.is_dataclass(cls):
            raise CodecError(f"{cls!r} in hershy.domain.events.Event is not a dataclass")
        if any(field.name == TYPE_KEY for field in dataclasses.fields(cls)):
            raise CodecError(f"event {cls.__name__} has a field named {TYPE_KEY!r}: it is the tag")
        classes[cls.__name__] = cls
    return classes


EVENT_CLASSES = event_classes()


# --- writing ---------------------------------------------------------------------


def to_plain(value: Any, *, omit_defaults: bool = False) -> Any:
    """`value` as JSON-ready data (dicts, lists, strings, numbers, None).

    With `omit_defaults`, a dataclass's fields that hold their default (the same
    type, equal) are left out: reading fills them back in (`from_plain`).
    """
    # Enums first: a StrEnum or IntEnum is a str or an int too, but is stored by name.
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if omit_defaults:
            plain = {}
            for name, has_default, default in _defaults_of(type(value)):
                item = getattr(value, name)
                if has_default and type(item) is type(default) and item == default:
                    continue
                plain[name] = to_plain(item, omit_defaults=True)
            return plain
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise CodecError(f"only string keys can be stored, not those of {value!r}")
        return {key: to_plain(item, omit_defaults=omit_defaults) for key, item in value.items()}
    if isinstance(value, Set):
        # Sorted where possible, so the same set is always stored the same way.
        items = [to_plain(item, omit_defaults=omit_defaults) for item in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [to_plain(item, omit_defaults=omit_defaults) for item in value]
    raise CodecError(f"a {type(value).__name__} cannot be stored: {value!r}")


@functools.cache
def _defaults_of(cls: type[Any]) -> tuple[tuple[str, bool, Any], ...]:
    """Each field of `cls`: its name, whether it has a default, and that default."""
    fields = []
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            fields.append((field.name, True, field.default))
        elif field.default_factory is not dataclasses.MISSING:
            # The domain's factories make empty containers: the same value every call.
            fields.append((field.name, True, field.default_factory()))
        else:
            fields.append((field.name, False, None))
    return tuple(fields)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=True)


def encode_event(event: ev.Event) -> str:
    cls = type(event)
    if EVENT_CLASSES.get(cls.__name__) is not cls:
        raise CodecError(f"{cls.__name__} is not in hershy.domain.events.Event")
    return _dumps({TYPE_KEY: cls.__name__, **to_plain(event, omit_defaults=True)})


def encode_program(program: Program) -> str:
    return _dumps(to_plain(program, omit_defaults=True))


# --- reading ---------------------------------------------------------------------


def decode_event(text: str) -> ev.Event:
    data = _loads(text)
    if not isinstance(data, dict) or not isinstance(data.get(TYPE_KEY), str):
        raise CodecError(f"not a stored event: {text[:80]!r}")
    name = data.pop(TYPE_KEY)
    cls = EVENT_CLASSES.get(name)
    if cls is None:
        raise CodecError(f"unknown event type {name!r} (written by a newer Hershy?)")
    event: ev.Event = from_plain(cls, data)
    return event


def decode_program(text: str) -> Program:
    program: Program = from_plain(Program, _loads(text))
    return program


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise CodecError(f"not JSON: {error}") from None


def from_plain(target: Any, data: Any) -> Any:
    """`data` (as `to_plain` made it) back into a value of type `target`."""
    return _reader(target)(data)


Reader = Callable[[Any], Any]


@functools.cache
def _reader(target: Any) -> Reader:
    """How to read a value of type `target` (worked out once per type)."""
    origin = typing.get_origin(target)
    arguments = typing.get_args(target)
    if target is Any:
        return lambda data: data
    if target is None or target is types.NoneType:
        return _exactly_none
    if origin in (typing.Union, types.UnionType):
        return _union_reader(arguments)
    if origin is typing.Literal:
        return _literal_reader(arguments)
    if origin is not None:
        return _container_reader(target, origin, arguments)
    if isinstance(target, type):
        if issubclass(target, enum.Enum):
            return _enum_reader(target)
        if dataclasses.is_dataclass(target):
            return _dataclass_reader(target)
        if target in _SCALARS:
            return _SCALARS[target]
    raise CodecError(f"the codec cannot store values of type {target!r}")


def _exactly_none(data: Any) -> None:
    if data is not None:
        raise CodecError(f"expected null, found {data!r}")


def _union_reader(arguments: tuple[Any, ...]) -> Reader:
    optional = types.NoneType in arguments
    readers = [_reader(argument) for argument in arguments if argument is not types.NoneType]

    def read(data: Any) -> Any:
        if data is None and optional:
            return None
        problems = []
        for reader in readers:
            try:
                return reader(data)
            except CodecError as error:
                problems.append(str(error))
        raise CodecError(" / ".join(problems) or f"expected null, found {data!r}")

    return read


def _literal_reader(arguments: tuple[Any, ...]) -> Reader:
    def read(data: Any) -> Any:
        for argument in arguments:
            if type(data) is type(argument) and data == argument:
                return argument
        raise CodecError(f"expected one of {arguments!r}, found {data!r}")

    return read


def _container_reader(target: Any, origin: Any, arguments: tuple[Any, ...]) -> Reader:
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return _sequence_reader(_reader(arguments[0]), tuple)
        return _fixed_tuple_reader(tuple(_reader(argument) for argument in arguments))
    if origin in (list, Sequence):
        # An abstract Sequence comes back as a tuple: records are frozen.
        return _sequence_reader(_reader(arguments[0]), list if origin is list else tuple)
    if origin in (frozenset, set, Set):
        return _sequence_reader(_reader(arguments[0]), set if origin is set else frozenset)
    if origin in (dict, Mapping):
        return _mapping_reader(_reader(arguments[1]))
    raise CodecError(f"the codec cannot store values of type {target!r}")


def _sequence_reader(item: Reader, make: Callable[[Any], Any]) -> Reader:
    def read(data: Any) -> Any:
        if not isinstance(data, list):
            raise CodecError(f"expected a list, found {data!r}")
        return make(item(element) for element in data)

    return read


def _fixed_tuple_reader(items: tuple[Reader, ...]) -> Reader:
    def read(data: Any) -> Any:
        if not isinstance(data, list) or len(data) != len(items):
            raise CodecError(f"expected a list of {len(items)}, found {data!r}")
        return tuple(reader(element) for reader, element in zip(items, data, strict=True))

    return read


def _mapping_reader(value: Reader) -> Reader:
    def read(data: Any) -> Any:
        if not isinstance(data, dict):
            raise CodecError(f"expected an object, found {data!r}")
        return {key: value(item) for key, item in data.items()}

    return read


def _enum_reader(cls: type[enum.Enum]) -> Reader:
    # A plain dict of the names: `cls.__members__` and `cls[name]` cost ~20 us a read,
    # three reads a program (a restart reads 10,000 programs).
    members = dict(cls.__members__)

    def read(data: Any) -> enum.Enum:
        member = members.get(data) if type(data) is str else None
        if member is None:
            raise CodecError(f"{data!r} is not a {cls.__name__}")
        return member

    return read


def _dataclass_reader(cls: type[Any]) -> Reader:
    hints = typing.get_type_hints(cls)
    fields = [field for field in dataclasses.fields(cls) if field.init]
    readers: dict[str, Reader] = {}
    required = set()
    for field in fields:
        readers[field.name] = _reader(hints[field.name])
        no_default = field.default is dataclasses.MISSING
        if no_default and field.default_factory is dataclasses.MISSING:
            required.add(field.name)

    names = frozenset(readers)

    def read(data: Any) -> Any:
        if not isinstance(data, dict):
            raise CodecError(f"expected a {cls.__name__} object, found {data!r}")
        keys = data.keys()
        if not keys <= names:
            unknown = keys - names
            raise CodecError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
        if not required <= keys:
            missing = required - keys
            raise CodecError(f"{cls.__name__} lacks {', '.join(sorted(missing))}")
        name = ""
        try:
            # One comprehension, no try per field: the common case (a good row) fast.
            values = {(name := key): readers[key](item) for key, item in data.items()}
        except CodecError as error:
            raise CodecError(f"{cls.__name__}.{name}: {error}") from None
        return cls(**values)

    return read


def _read_bool(data: Any) -> bool:
    if type(data) is not bool:
        raise CodecError(f"expected true or false, found {data!r}")
    return data


def _read_int(data: Any) -> int:
    if type(data) is int:
        return data
    if not isinstance(data, int) or isinstance(data, bool):
        raise CodecError(f"expected an integer, found {data!r}")
    return data


def _read_float(data: Any) -> float:
    if type(data) is float:
        return data
    # JSON writes 1.0 as 1.0, but a float field may hold an int someone passed.
    if not isinstance(data, int | float) or isinstance(data, bool):
        raise CodecError(f"expected a number, found {data!r}")
    return float(data)


def _read_str(data: Any) -> str:
    if type(data) is not str and not isinstance(data, str):
        raise CodecError(f"expected a string, found {data!r}")
    return data


_SCALARS: dict[type[Any], Reader] = {
    bool: _read_bool,
    int: _read_int,
    float: _read_float,
    str: _read_str,
}

# Worked out now, so a field of a type the codec cannot store fails at import (and in
# the tests), not on the first read of a stored row.
for _cls in (*EVENT_CLASSES.values(), Program):
    _reader(_cls)
