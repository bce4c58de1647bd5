"""Watch SNAPSHOT messages put together from each program's serialised bytes.

A program is serialised once per revision of it; a snapshot's messages (one per
program, or batches of them) are then only concatenations. That is exact: in
the protobuf wire format a message field is its tag, the length as a varint and
the message's bytes, and a repeated one is that once per element, so
`type` + (tag 5 + length + program)... is byte for byte what serialising a
`WatchProgramsResponse` with those `snapshot_programs` gives (the tests check
it against the proto built the slow way). Pure: no IO.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from hershy.v1 import program_pb2 as pb

Response = pb.WatchProgramsResponse

#: A length-delimited field's wire type, and the tags of the fields put together here.
_LENGTH_DELIMITED = 2
_VARINT = 0


def varint(value: int) -> bytes:
    """A non-negative integer as a protobuf varint (an int64 field's negative values
    take ten bytes; no revision or length is negative)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


#: `type: TYPE_SNAPSHOT`, field 1 (written first: fields go out in number order).
SNAPSHOT_TYPE = Response(type=Response.TYPE_SNAPSHOT).SerializeToString()
PROGRAM_TAG = _tag(Response.PROGRAM_FIELD_NUMBER, _LENGTH_DELIMITED)
REVISION_TAG = _tag(Response.REVISION_FIELD_NUMBER, _VARINT)
SNAPSHOT_PROGRAMS_TAG = _tag(Response.SNAPSHOT_PROGRAMS_FIELD_NUMBER, _LENGTH_DELIMITED)


def length_prefixed(program: bytes) -> bytes:
    """A serialised Program as the body of any field holding it: its length, then it."""
    return varint(len(program)) + program


def snapshot_message(program: bytes, revision: int) -> bytes:
    """One program's SNAPSHOT message (`program` is `length_prefixed`): today's stream."""
    message = SNAPSHOT_TYPE + PROGRAM_TAG + program
    if revision:  # proto3 leaves a zero out
        message += REVISION_TAG + varint(revision)
    return message


def snapshot_batches(programs: Sequence[bytes], size: int, max_bytes: int) -> Iterator[bytes]:
    """The SNAPSHOT messages of a batched snapshot, in order: up to `size` programs each
    (`length_prefixed`), ending a batch early rather than passing `max_bytes` (a single
    program bigger than that goes alone). No programs: no messages."""
    if size <= 0:
        raise ValueError("a batch holds at least one program")
    parts: list[bytes] = []
    held = len(SNAPSHOT_TYPE)
    for program in programs:
        entry = len(SNAPSHOT_PROGRAMS_TAG) + len(program)
        if parts and (len(parts) == size or held + entry > max_bytes):
            yield SNAPSHOT_TYPE + SNAPSHOT_PROGRAMS_TAG + SNAPSHOT_PROGRAMS_TAG.join(parts)
            parts, held = [], len(SNAPSHOT_TYPE)
        parts.append(program)
        held += entry
    if parts:
        yield SNAPSHOT_TYPE + SNAPSHOT_PROGRAMS_TAG + SNAPSHOT_PROGRAMS_TAG.join(parts)
