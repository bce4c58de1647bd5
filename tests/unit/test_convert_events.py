"""Every event reaches Watch subscribers with its kind set: none goes out blank."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hershy.entrypoints import convert
from tests.unit.test_store_round_trip import EVENT_CLASSES, strategy_for


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_every_event_class_has_its_own_kind_on_the_wire(
    cls: type[Any], data: st.DataObject
) -> None:
    event = data.draw(strategy_for(cls))
    message = convert.event_to_pb(event)
    kind = message.WhichOneof("kind")
    assert kind is not None, f"{cls.__name__} goes out with no kind"
    # The oneof field is named after the event (HostRestarted -> host_restarted).
    words = "".join(f"_{c.lower()}" if c.isupper() else c for c in cls.__name__).lstrip("_")
    assert kind == words or (cls.__name__ == "ProgramCreated" and kind == "created")
