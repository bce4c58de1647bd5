"""Fan-out of program changes to Watch subscribers.

Every committed change is published once; each subscriber has a bounded
buffer of its own, so a slow subscriber never slows a supervisor or another
subscriber. A subscriber that overflows loses its buffer and is told to
resync (it gets a fresh snapshot). Recent changes are kept so a subscriber can
resume after a revision; an older resume point is an error, never a silent gap.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hershy.domain import events as ev
from hershy.domain.errors import RevisionTooOld
from hershy.domain.model import Program


class ChangeKind(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    program: Program
    event: ev.Event

    @property
    def revision(self) -> int:
        return self.program.revision


class Resync(enum.Enum):
    """Marks the point where a subscriber fell behind and lost changes."""

    RESYNC = "resync"


class Closed(enum.Enum):
    """Marks the end of a subscription (the Host is shutting down)."""

    CLOSED = "closed"


class Subscription:
    """One subscriber's bounded buffer of changes."""

    def __init__(
        self, hub: WatchHub, program_id: str | None, capacity: int, user_id: str | None = None
    ) -> None:
        self._hub = hub
        self.program_id = program_id
        #: Only this user's programs, when set (a user's token sees nothing else).
        self.user_id = user_id
        self._capacity = capacity
        self._buffer: deque[Change] = deque()
        self._overflowed = False
        self._closed = False
        self._wakeup = asyncio.Event()

    def wants(self, change: Change) -> bool:
        return (self.program_id is None or change.program.id == self.program_id) and (
            self.user_id is None or change.program.user_id == self.user_id
        )

    def offer(self, change: Change) -> None:
        if self._overflowed or self._closed:
            return
        if len(self._buffer) >= self._capacity:
            self._buffer.clear()
            self._overflowed = True
        else:
            self._buffer.append(change)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    def drop_buffered(self) -> None:
        """Forget what is buffered: the caller has just taken a fresh snapshot."""
        self._buffer.clear()
        self._overflowed = False

    async def next(self) -> Change | Resync | Closed:
        while True:
            if self._overflowed:
                return Resync.RESYNC
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                return Closed.CLOSED
            self._wakeup.clear()
            await self._wakeup.wait()

    def unsubscribe(self) -> None:
        self._hub.unsubscribe(self)


#: Reads changes older than the hub remembers from a durable log: (oldest kept, changes after).
OlderChanges = Callable[[int], tuple[int, list[Change]]]


class WatchHub:
    def __init__(
        self,
        history: int = 10_000,
        subscriber_capacity: int = 1_000,
        older: OlderChanges | None = None,
    ) -> None:
        self._history: deque[Change] = deque(maxlen=history)
        self._older = older
        # Indexed by what they watch, so a change only visits its own subscribers.
        self._watching_all: set[Subscription] = set()
        self._watching_one: dict[str, set[Subscription]] = {}
        self._capacity = subscriber_capacity
        self._closed = False
        #: The revision of the last change published (0: none yet).
        self.revision = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._watching_all) + sum(map(len, self._watching_one.values()))

    def publish(self, change: Change) -> None:
        if change.revision <= self.revision:
            raise ValueError(f"revision {change.revision} published after {self.revision}")
        self.revision = change.revision
        self._history.append(change)
        owner = change.program.user_id
        for subscription in self._watching_all:
            if subscription.user_id is None or subscription.user_id == owner:
                subscription.offer(change)
        for subscription in self._watching_one.get(change.program.id, ()):
            subscription.offer(change)

    def subscribe(
        self,
        program_id: str | None = None,
        *,
        capacity: int | None = None,
        user_id: str | None = None,
    ) -> Subscription:
        subscription = Subscription(self, program_id, capacity or self._capacity, user_id)
        if self._closed:
            subscription.close()
        elif program_id is None:
            self._watching_all.add(subscription)
        else:
            self._watching_one.setdefault(program_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.program_id is None:
            self._watching_all.discard(subscription)
            return
        watching = self._watching_one.get(subscription.program_id)
        if watching is not None:
            watching.discard(subscription)
            if not watching:
                del self._watching_one[subscription.program_id]

    def start_at(self, revision: int, older: OlderChanges | None) -> None:
        """After a restart: the next change follows `revision`; older ones come from `older`."""
        if self._history or self.revision:
            raise ValueError("the hub has published changes already")
        self.revision = revision
        self._older = older

    def changes_after(self, revision: int, wants: Callable[[Change], bool]) -> Iterable[Change]:
        """The changes after `revision`, or RevisionTooOld if some are forgotten."""
        oldest = self._history[0].revision if self._history else self.revision + 1
        if revision < oldest - 1 and revision <= self.revision and self._older is not None:
            oldest, changes = self._older(revision)
            if revision >= oldest - 1:
                return [change for change in changes if wants(change)]
        if revision > self.revision:
            raise RevisionTooOld(
                f"revision {revision} is ahead of this Host (now at {self.revision}); "
                "the Host may have restarted: watch again without resume_revision",
                oldest - 1,
            )
        if revision < oldest - 1:
            raise RevisionTooOld(
                f"revision {revision} is too old: the oldest change remembered is "
                f"{oldest}; watch again without resume_revision",
                oldest - 1,
            )
        return [change for change in self._history if change.revision > revision and wants(change)]

    def close(self) -> None:
        """End every subscription (Host shutdown)."""
        self._closed = True
        for subscription in (*self._watching_all, *self._single_program_subscribers()):
            subscription.close()
        self._watching_all.clear()
        self._watching_one.clear()

    def _single_program_subscribers(self) -> list[Subscription]:
        return [s for watching in self._watching_one.values() for s in watching]
