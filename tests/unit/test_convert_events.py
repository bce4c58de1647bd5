"""Every event reaches Watch subscribers with its kind set: none goes out blank."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hershy.entrypoints import convert
from tests.unit.test_store_round_trip import EVENT_CLASSES, strategy_for


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
@settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_event_class_has_its_own_kind_on_the_wire(
    cls: type[Any], data: st.DataObject
) -> None:
    event = within_wire_ranges(data.draw(strategy_for(cls)))
    message = convert.event_to_pb(event)
    kind = message.WhichOneof("kind")
    assert kind is not None, f"{cls.__name__} goes out with no kind"
    # The oneof field is named after the event (HostRestarted -> host_restarted).
    words = "".join(f"_{c.lower()}" if c.isupper() else c for c in cls.__name__).lstrip("_")
    assert kind == words or (cls.__name__ == "ProgramCreated" and kind == "created")


def within_wire_ranges(value: Any) -> Any:
    """Numbers the wire can carry (times of this era, counts that fit 32 bits), nested
    dataclasses included: what is checked here is the kind, not the field ranges."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return 1_700_000_000.25
    if isinstance(value, int):
        return 7
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: within_wire_ranges(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **changes)
    return value
