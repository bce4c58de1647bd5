"""The state behind `watch_forever`, shared by the sync and the async client.

A Watch stream ends when the Host shuts down and breaks when the connection
does. To survive both without losing or repeating a change, the watcher
remembers the revision it has seen up to (that of the last change, or of the
last SYNCED) and reconnects with `resume_revision` set to it: the Host replays
exactly the changes after it. When that is impossible the caller must start
over from a fresh snapshot, and is told so with a `Resync` marker:

- the Host does not know the revision (OUT_OF_RANGE: too old, or ahead of a
  Host whose data was reset);
- the Host dropped changes because this watcher fell behind (TYPE_RESYNC; the
  Host sends the fresh snapshot on the same stream);
- the connection broke in the middle of a snapshot (snapshot entries carry
  their programs' revisions, not a resume point, so there is nothing to
  resume from).

This module holds that bookkeeping without IO; the clients run the loop.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from hershy.v1 import program_pb2 as pb
from hershy_client._common import ProgramRef, watch_request
from hershy_client.errors import HershyError, RevisionTooOld

log = logging.getLogger("hershy_client.watch")

Response = pb.WatchProgramsResponse
#: First reconnect delay and its cap (seconds); the delay doubles in between.
INITIAL_BACKOFF = 0.2
MAX_BACKOFF = 5.0
#: Failures worth reconnecting after: the Host is down, restarting or unreachable,
#: or the connection broke mid-stream. Anything else (a bad name, a deleted
#: program, a refused token) would fail the same way again and is raised.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


class ResyncReason(enum.Enum):
    """Why the caller must throw away what it knows about programs."""

    #: The Host does not know the revision to resume from (OUT_OF_RANGE).
    REVISION_TOO_OLD = "revision_too_old"
    #: The Host dropped changes for this watcher, which fell behind (TYPE_RESYNC).
    FELL_BEHIND = "fell_behind"
    #: The connection broke during a snapshot, which cannot be resumed.
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Resync:
    """A marker in a `watch_forever` stream: forget every program you know.

    A fresh snapshot follows (TYPE_SNAPSHOT messages, then TYPE_SYNCED), after
    which changes continue. Changes between the last one seen and the snapshot
    may have been missed, which is why the state must be rebuilt from it.
    """

    reason: ResyncReason
    message: str


#: What `watch_forever` yields: a message of the stream, or a Resync marker.
WatchItem = Response | Resync


def per_program(message: Response) -> Sequence[Response]:
    """A message as the stream carries it without batches: a batched SNAPSHOT (asked for
    by `snapshot_batch_size`) as one SNAPSHOT message per program, each with the program's
    revision; any other message as it is. Callers see the same stream either way."""
    if not message.snapshot_programs:
        return (message,)
    return [
        Response(type=Response.TYPE_SNAPSHOT, program=program, revision=program.revision)
        for program in message.snapshot_programs
    ]


class Backoff:
    """Exponential delays between reconnects: `initial`, doubling to `maximum`."""

    def __init__(self, initial: float = INITIAL_BACKOFF, maximum: float = MAX_BACKOFF) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the one after."""
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """The stream delivered something: the Host is back, start over at `initial`."""
        self._next = self.initial


class WatchCursor:
    """Where a watcher is in the stream of changes, and what to tell its caller."""

    def __init__(
        self,
        program: ProgramRef | None,
        resume_revision: int | None,
        backoff: Backoff,
    ) -> None:
        self.program = program
        #: The revision everything up to has been yielded: None before the
        #: first SYNCED (or after a resync), when only a snapshot can catch up.
        self.revision = resume_revision
        self.backoff = backoff
        #: Snapshot entries were yielded without their SYNCED yet.
        self._partial_snapshot = False

    def request(self) -> pb.WatchProgramsRequest:
        """Resume after the last revision seen, or start with a snapshot."""
        return watch_request(self.program, self.revision)

    def on_message(self, message: Response) -> WatchItem | None:
        """What to yield for a message; None for a change already yielded."""
        self.backoff.reset()
        kind = message.type
        if kind == Response.TYPE_RESYNC:
            self.revision = None
            self._partial_snapshot = False
            return Resync(
                ResyncReason.FELL_BEHIND,
                "the Host dropped changes for this watcher; a fresh snapshot follows",
            )
        if kind == Response.TYPE_SNAPSHOT:
            self._partial_snapshot = True
            return message
        if kind == Response.TYPE_SYNCED:
            self._partial_snapshot = False
            self.revision = message.revision
            return message
        if self.revision is not None and message.revision <= self.revision:
            # The Host replays exactly what follows the resume point; this
            # guards the promise "never the same change twice" regardless.
            log.debug("skipping change %d, already at %d", message.revision, self.revision)
            return None
        self.revision = message.revision
        return message

    def on_revision_too_old(self, error: RevisionTooOld) -> Resync:
        """The resume point is unknown to the Host: start over with a snapshot."""
        log.warning("cannot resume after revision %s (%s): resyncing", self.revision, error.message)
        self.revision = None
        self._partial_snapshot = False
        return Resync(ResyncReason.REVISION_TOO_OLD, error.message)

    def on_disconnect(self, error: HershyError | None) -> tuple[float, Resync | None]:
        """After the stream ended (`error` None) or broke retryably: the delay, and a
        marker if the caller holds part of a snapshot it must throw away."""
        delay = self.backoff.next()
        log.info(
            "watch %s (%s); reconnecting in %.1f s %s",
            "ended" if error is None else "broke",
            "the Host is shutting down?" if error is None else error,
            delay,
            f"after revision {self.revision}" if self.revision is not None else "for a snapshot",
        )
        if self._partial_snapshot:
            self._partial_snapshot = False
            return delay, Resync(
                ResyncReason.INTERRUPTED,
                "the connection broke during a snapshot; a fresh snapshot follows",
            )
        return delay, None
