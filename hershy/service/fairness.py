"""Limits that keep one tenant's load from taking the Host from the others."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hershy.domain.errors import ResourceExhausted
from hershy.domain.limits import MAX_CREATES_IN_PROGRESS_PER_USER
from hershy.domain.validation import cut

__all__ = ["MAX_CREATES_IN_PROGRESS_PER_USER", "PerUserLimit"]


class PerUserLimit:
    """At most `limit` operations of one kind in progress per user; the next is refused."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self._what = what
        self._in_progress: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, user_id: str) -> Iterator[None]:
        """Holds one of the user's places for the block; RESOURCE_EXHAUSTED when none is free."""
        taken = self._in_progress.get(user_id, 0)
        if taken >= self.limit:
            raise ResourceExhausted(
                f"user {cut(user_id)} already has {taken} {self._what} in progress (at most "
                f"{self.limit} at a time): retry once one has finished"
            )
        self._in_progress[user_id] = taken + 1
        try:
            yield
        finally:
            left = self._in_progress[user_id] - 1
            if left:
                self._in_progress[user_id] = left
            else:
                del self._in_progress[user_id]

    def in_progress(self, user_id: str) -> int:
        return self._in_progress.get(user_id, 0)
