"""Batched Watch snapshots put together from each program's bytes: exactly what the
proto built the slow way serialises to, capped in programs and in bytes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hershy.domain import limits
from hershy.domain.errors import InvalidArgument
from hershy.entrypoints import watch_bytes
from hershy.entrypoints.grpc_server import _snapshot_batch
from hershy.v1 import program_pb2 as pb

Response = pb.WatchProgramsResponse


def program(number: int, *, env_bytes: int = 0) -> pb.Program:
    return pb.Program(
        name=f"programs/prog-{number:012d}",
        id=f"prog-{number:012d}",
        user_id=f"user{number % 3}",
        build_id="b-" + "0" * 24,
        state=pb.STATE_READY,
        revision=number * 300 + 1,  # varints of one, two and three bytes
        restart_count=number % 4,
        create_time=Timestamp(seconds=1_700_000_000 + number, nanos=number),
        env={"PAD": "x" * env_bytes} if env_bytes else {},
        runtime="fake",
    )


def prefixed(message: pb.Program) -> bytes:
    return watch_bytes.length_prefixed(message.SerializeToString())


@pytest.mark.parametrize("revision", [0, 1, 127, 128, 2**40])
def test_one_snapshot_message_is_the_bytes_of_todays_message(revision: int) -> None:
    message = program(7)
    slow = Response(type=Response.TYPE_SNAPSHOT, program=message, revision=revision)
    fast = watch_bytes.snapshot_message(prefixed(message), revision)
    assert fast == slow.SerializeToString()
    assert Response.FromString(fast) == slow


def test_a_batch_parses_equal_to_the_proto_built_the_slow_way() -> None:
    programs = [program(number, env_bytes=number * 50) for number in range(40)]
    [batch] = watch_bytes.snapshot_batches([prefixed(p) for p in programs], 1000, 1 << 20)
    slow = Response(type=Response.TYPE_SNAPSHOT, snapshot_programs=programs)
    assert batch == slow.SerializeToString()
    parsed = Response.FromString(batch)
    assert parsed == slow
    assert not parsed.HasField("program")
    assert parsed.revision == 0
    assert [p.revision for p in parsed.snapshot_programs] == [p.revision for p in programs]


def test_batches_hold_at_most_size_programs_in_order() -> None:
    programs = [program(number) for number in range(25)]
    batches = list(watch_bytes.snapshot_batches([prefixed(p) for p in programs], 10, 1 << 20))
    parsed = [Response.FromString(batch) for batch in batches]
    assert [len(b.snapshot_programs) for b in parsed] == [10, 10, 5]
    assert [p for b in parsed for p in b.snapshot_programs] == programs
    assert all(b.type == Response.TYPE_SNAPSHOT for b in parsed)


def test_no_programs_no_batches_and_size_must_be_positive() -> None:
    assert list(watch_bytes.snapshot_batches([], 10, 1 << 20)) == []
    with pytest.raises(ValueError, match="at least one"):
        list(watch_bytes.snapshot_batches([prefixed(program(1))], 0, 1 << 20))


def test_a_batch_ends_before_it_passes_the_byte_cap() -> None:
    cap = 8 * 1024
    programs = [program(number, env_bytes=1500) for number in range(30)]
    batches = list(watch_bytes.snapshot_batches([prefixed(p) for p in programs], 1000, cap))
    assert len(batches) > 1
    assert all(len(batch) <= cap for batch in batches)
    seen = [p for batch in batches for p in Response.FromString(batch).snapshot_programs]
    assert seen == programs


def test_a_program_bigger_than_the_cap_goes_alone() -> None:
    small, big = program(1), program(2, env_bytes=20_000)
    data = [prefixed(small), prefixed(big), prefixed(small)]
    batches = [Response.FromString(b) for b in watch_bytes.snapshot_batches(data, 100, 10_000)]
    assert [list(b.snapshot_programs) for b in batches] == [[small], [big], [small]]


def test_the_hosts_cap_and_its_byte_cap_stay_under_grpcs_default_limit() -> None:
    assert _snapshot_batch(0) == 0  # not asked: today's stream
    assert _snapshot_batch(10) == 10
    assert _snapshot_batch(2**31 - 1) == limits.MAX_WATCH_SNAPSHOT_BATCH
    with pytest.raises(InvalidArgument) as refused:
        _snapshot_batch(-1)
    assert "snapshot_batch_size" in str(refused.value)
    # A client that never raised gRPC's 4 MiB receive limit still takes every batch.
    grpc_default_receive = 4 * limits.MiB
    assert grpc_default_receive >= limits.MAX_WATCH_SNAPSHOT_BATCH_BYTES * 2
    assert limits.MAX_WATCH_SNAPSHOT_BATCH_BYTES < limits.MAX_MESSAGE_BYTES


def test_varint_matches_protobufs() -> None:
    for value in (0, 1, 127, 128, 300, 2**31, 2**63 - 1):
        encoded = pb.Program(revision=value).SerializeToString()
        assert encoded == (b"\x70" + watch_bytes.varint(value) if value else b"")


def test_the_go_client_asks_for_the_hosts_cap() -> None:
    source = (Path(__file__).resolve().parents[2] / "clients/go/hershy/watch.go").read_text()
    found = re.search(r"^const SnapshotBatch = (\d+)$", source, re.MULTILINE)
    assert found is not None
    assert int(found.group(1)) == limits.MAX_WATCH_SNAPSHOT_BATCH
