"""Every event the store writes can be read back, and every Program too.

The event classes come from the `hershy.domain.events.Event` union and the
values from strategies built out of each class's type hints: an event class
or a field added later is covered here with no change to this file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import re
import sqlite3
import tempfile
import types
import typing
from collections.abc import Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hershy.adapters import json_codec
from hershy.adapters.sqlite_store import FILE_NAME, SqliteEventLog, StoreError
from hershy.domain import events as ev
from hershy.domain.model import Program, Resources, State
from hershy.service.watch import Change, ChangeKind


def members(union: Any) -> Iterator[type[Any]]:
    if typing.get_origin(union) in (typing.Union, types.UnionType):
        for member in typing.get_args(union):
            yield from members(member)
    else:
        yield union


#: Every event class there is, read from the union (not from the codec's own list).
EVENT_CLASSES = list(members(ev.Event))


def strategy_for(target: Any) -> st.SearchStrategy[Any]:
    """Values of type `target`, from its type hints all the way down."""
    origin = typing.get_origin(target)
    arguments = typing.get_args(target)
    if target is None or target is types.NoneType:
        return st.none()
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(argument) for argument in arguments))
    if origin is Literal:
        return st.sampled_from(arguments)
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return st.lists(strategy_for(arguments[0]), max_size=3).map(tuple)
        return st.tuples(*(strategy_for(argument) for argument in arguments))
    if origin in (list, Sequence):
        items = st.lists(strategy_for(arguments[0]), max_size=3)
        return items if origin is list else items.map(tuple)
    if origin in (frozenset, set, Set):
        return st.frozensets(strategy_for(arguments[0]), max_size=3).map(
            set if origin is set else frozenset
        )
    if origin in (dict, Mapping):
        return st.dictionaries(st.text(max_size=8), strategy_for(arguments[1]), max_size=3)
    if isinstance(target, type) and issubclass(target, enum.Enum):
        return st.sampled_from(list(target))
    if isinstance(target, type) and dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
        fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(target) if f.init}
        return st.builds(target, **fields)
    if target is float:
        # NaN is never equal to itself; every other float, infinities too, must come back.
        return st.floats(allow_nan=False)
    if target is str:
        return st.text(max_size=40)
    return st.from_type(target)


def programs() -> st.SearchStrategy[Program]:
    program: st.SearchStrategy[Program] = strategy_for(Program)
    return program


def kind_of(program: Program, event: ev.Event) -> ChangeKind:
    if isinstance(event, ev.ProgramCreated):
        return ChangeKind.CREATED
    return ChangeKind.DELETED if program.state is State.DELETED else ChangeKind.UPDATED


def append_all(store: SqliteEventLog, pairs: list[tuple[Program, ev.Event]]) -> list[int]:
    async def append() -> list[int]:
        return [await store.append(program, event) for program, event in pairs]

    return asyncio.run(append())


def check_reads_back(
    store: SqliteEventLog, pairs: list[tuple[Program, ev.Event]], revisions: list[int]
) -> None:
    expected = [
        Change(kind_of(program, event), dataclasses.replace(program, revision=revision), event)
        for (program, event), revision in zip(pairs, revisions, strict=True)
    ]
    oldest, changes = store.changes_after(revisions[0] - 1)
    assert oldest == 1
    assert changes == expected
    for program_id in {program.id for program, _ in pairs}:
        history = [(c.revision, c.event, c.program) for c in expected if c.program.id == program_id]
        assert store.events_of(program_id) == history


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
@SETTINGS
@given(data=st.data())
def test_every_event_class_reads_back_from_the_store_also_after_reopening(
    cls: type[Any], data: st.DataObject
) -> None:
    event = data.draw(strategy_for(cls), label="event")
    program = data.draw(programs(), label="program")
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteEventLog(Path(directory))
        store.open()
        try:
            revisions = append_all(store, [(program, event)])
            check_reads_back(store, [(program, event)], revisions)
        finally:
            store.close()
        again = SqliteEventLog(Path(directory))
        recovered = again.open()
        try:
            check_reads_back(again, [(program, event)], revisions)
            stored = dataclasses.replace(program, revision=revisions[0])
            live = [] if program.state is State.DELETED else [stored]
            assert recovered.programs == live
            assert recovered.revision == revisions[0]
        finally:
            again.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(programs(), st.one_of(*(strategy_for(cls) for cls in EVENT_CLASSES))),
        min_size=1,
        max_size=12,
    )
)
def test_a_mixed_log_reads_back_in_order_and_the_latest_programs_are_recovered(
    pairs: list[tuple[Program, ev.Event]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteEventLog(Path(directory))
        store.open()
        try:
            revisions = append_all(store, pairs)
            assert revisions == list(range(1, len(pairs) + 1))
            check_reads_back(store, pairs, revisions)
        finally:
            store.close()
        again = SqliteEventLog(Path(directory))
        recovered = again.open()
        try:
            check_reads_back(again, pairs, revisions)
            latest: dict[str, Program] = {}
            for (program, _), revision in zip(pairs, revisions, strict=True):
                latest[program.id] = dataclasses.replace(program, revision=revision)
            first_seen = list(dict.fromkeys(program.id for program, _ in pairs))
            expected = [latest[i] for i in first_seen if latest[i].state is not State.DELETED]
            assert recovered.programs == expected
        finally:
            again.close()


def defaulted(cls: type[Any]) -> dict[str, Any]:
    """The fields of `cls` that have a default, with it."""
    values = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
    return values


@pytest.mark.parametrize("cls", [*EVENT_CLASSES, Program], ids=lambda cls: cls.__name__)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_an_older_row_without_a_field_takes_its_default(
    cls: type[Any], data: st.DataObject
) -> None:
    """A row written before a field existed: the field reads as the dataclass default."""
    value = data.draw(strategy_for(cls))
    defaults = defaulted(cls)
    decode = json_codec.decode_program if cls is Program else json_codec.decode_event
    row = full_row(
        value
    )  # every field written, as this Hershy wrote them until it omitted defaults
    for name in defaults:
        del row[name]
    assert decode(json.dumps(row)) == dataclasses.replace(value, **defaults)


def full_row(value: Any) -> dict[str, Any]:
    """`value` as a row that names every field (before rows left out their defaults)."""
    row: dict[str, Any] = json_codec.to_plain(value)
    if not isinstance(value, Program):
        row = {json_codec.TYPE_KEY: type(value).__name__, **row}
    return row


@pytest.mark.parametrize("cls", [*EVENT_CLASSES, Program], ids=lambda cls: cls.__name__)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_a_row_naming_every_field_reads_back_the_same(cls: type[Any], data: st.DataObject) -> None:
    """Rows written before defaults were left out still read back exactly."""
    value = data.draw(strategy_for(cls))
    decode = json_codec.decode_program if cls is Program else json_codec.decode_event
    assert decode(json.dumps(full_row(value))) == value


@pytest.mark.parametrize("cls", [*EVENT_CLASSES, Program], ids=lambda cls: cls.__name__)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_a_row_names_no_field_at_its_default(cls: type[Any], data: st.DataObject) -> None:
    """What is written leaves out exactly the fields that hold their default (same type)."""
    value = data.draw(strategy_for(cls))
    encode = json_codec.encode_program if cls is Program else json_codec.encode_event
    row = json.loads(encode(value))
    for field in dataclasses.fields(cls):
        held = getattr(value, field.name)
        default = defaulted(cls).get(field.name, dataclasses.MISSING)
        at_default = type(held) is type(default) and held == default
        assert (field.name not in row) == at_default, field.name


def test_a_fresh_program_row_is_small() -> None:
    """A program at rest with every setting at its default: only what is its own is written."""
    program = Program(
        id="prog-1",
        user_id="alice",
        build_id="b1",
        proxy_target="",
        created_at=1.5,
        updated_at=1.5,
    )
    row = json.loads(json_codec.encode_program(program))
    assert row == {
        "id": "prog-1",
        "user_id": "alice",
        "build_id": "b1",
        "proxy_target": "",
        "created_at": 1.5,
        "updated_at": 1.5,
    }
    assert json_codec.decode_program(json.dumps(row)) == program


def test_an_old_row_in_the_store_reads_back_with_defaults(tmp_path: Path) -> None:
    """Rows as an older Hershy wrote them (no resources, no container_id): read, defaulted."""
    store = SqliteEventLog(tmp_path)
    store.open()
    store.close()
    old_program = {
        "id": "prog-1",
        "user_id": "alice",
        "build_id": "b1",
        "proxy_target": "127.0.0.1:19001",
        "created_at": 1,
        "updated_at": 2.5,
        "state": "READY",
        "run": 1,
    }
    old_event = {"type": "ContainerExited", "at": 3, "run": 1, "exit_code": 7}
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute(
            "INSERT INTO events (revision, program_id, kind, event, program) VALUES (?,?,?,?,?)",
            (1, "prog-1", "updated", json.dumps(old_event), json.dumps(old_program)),
        )
        db.execute(
            "INSERT INTO programs (program_id, created_revision, revision, program) "
            "VALUES (?,?,?,?)",
            ("prog-1", 1, 1, json.dumps(old_program)),
        )
    store = SqliteEventLog(tmp_path)
    recovered = store.open()
    try:
        program = Program(
            "prog-1", "alice", "b1", "127.0.0.1:19001", 1.0, 2.5, state=State.READY, run=1
        )
        assert recovered.programs == [program]
        _, changes = store.changes_after(0)
        assert changes == [
            Change(ChangeKind.UPDATED, program, ev.ContainerExited(3.0, 1, 7, False, None))
        ]
        assert program.resources == Resources()
    finally:
        store.close()


# --- what the codec refuses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "complaint"),
    [
        ('{"type": "ContainerFlew", "at": 1}', "unknown event type 'ContainerFlew'"),
        ('{"at": 1}', "not a stored event"),
        ("[1, 2]", "not a stored event"),
        ("{not json", "not JSON"),
        ('{"type": "StartRequested", "at": 1, "why": "x"}', "has no field why"),
        ('{"type": "BuildFailed", "at": 1, "run": 1}', "lacks reason"),
        ('{"type": "BuildFailed", "at": 1, "run": "1", "reason": "x"}', "run: expected an integer"),
        ('{"type": "StartFailed", "at": 1, "run": true, "reason": "x"}', "expected an integer"),
        ('{"type": "ContainerReady", "at": "noon", "run": 1}', "at: expected a number"),
        (
            '{"type": "ContainerExited", "at": 1, "run": 1, "exit_code": 0, "oom_killed": 1}',
            "expected true or false",
        ),
        (
            '{"type": "ProgramCreated", "at": 1, "program_id": "p", "user_id": "u", '
            '"build_id": "b", "proxy_target": "t", "resources": {"cpus": 9}}',
            "Resources has no field cpus",
        ),
    ],
)
def test_a_row_that_is_damaged_or_from_a_newer_hershy_is_refused_not_guessed(
    row: str, complaint: str
) -> None:
    with pytest.raises(json_codec.CodecError, match=re.escape(complaint)):
        json_codec.decode_event(row)


def test_a_program_row_with_an_unknown_state_or_field_is_refused() -> None:
    row = json.loads(json_codec.encode_program(Program("p", "u", "b", "127.0.0.1:1", 0.0, 0.0)))
    with pytest.raises(json_codec.CodecError, match="'FLYING' is not a State"):
        json_codec.decode_program(json.dumps({**row, "state": "FLYING"}))
    with pytest.raises(json_codec.CodecError, match="Program has no field wings"):
        json_codec.decode_program(json.dumps({**row, "wings": 2}))


def test_a_value_that_is_not_an_event_is_not_written() -> None:
    @dataclasses.dataclass(frozen=True)
    class Stranger:
        at: float

    with pytest.raises(json_codec.CodecError, match=r"not in hershy\.domain\.events\.Event"):
        json_codec.encode_event(Stranger(1.0))  # type: ignore[arg-type]


def test_an_event_the_codec_cannot_write_is_not_committed(tmp_path: Path) -> None:
    store = SqliteEventLog(tmp_path)
    store.open()
    program = Program("p", "u", "b", "127.0.0.1:1", 0.0, 0.0)
    try:
        with pytest.raises(json_codec.CodecError):
            asyncio.run(store.append(program, ev.BuildFailed(1.0, 1, object())))  # type: ignore[arg-type]
        assert store.changes_after(0) == (1, [])
    finally:
        store.close()
    with pytest.raises(StoreError, match="not open"):
        store.changes_after(0)


# --- the codec is generic: records of shapes the domain does not have yet ----------------


class Colour(enum.StrEnum):
    RED = "r"
    BLUE = "b"


@dataclasses.dataclass(frozen=True, slots=True)
class Inner:
    resources: Resources
    colour: Colour = Colour.RED


@dataclasses.dataclass(frozen=True, slots=True)
class FutureRecord:
    at: float
    inners: tuple[Inner, ...]
    by_name: Mapping[str, State]
    ports: frozenset[int]
    pair: tuple[int, str]
    names: Sequence[str]
    mode: Literal["fast", "slow"]
    either: int | str
    maybe: Inner | None = None


@settings(max_examples=100, deadline=None)
@given(strategy_for(FutureRecord))
def test_the_codec_round_trips_nested_shapes_it_was_never_told_about(record: FutureRecord) -> None:
    text = json.dumps(json_codec.to_plain(record))
    assert json_codec.from_plain(FutureRecord, json.loads(text)) == record


def test_the_codec_refuses_a_type_it_cannot_store() -> None:
    with pytest.raises(json_codec.CodecError, match="cannot store values of type"):
        json_codec.from_plain(bytes, "AA==")
    with pytest.raises(json_codec.CodecError, match="cannot be stored"):
        json_codec.to_plain(b"raw")
    with pytest.raises(json_codec.CodecError, match="only string keys"):
        json_codec.to_plain({1: "one"})
