"""Per-user quotas as the Host keeps them: the admin's limits, and a lock per user.

The limits live in the store (the admin sets them; every user starts with
none). The registry checks them at Create and Start (hershy.domain.quotas
says what counts) while holding the user's lock, from the check until the
change is committed: two calls of one user cannot both pass a limit that
fits one, and other users never wait for that user.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from hershy.domain.quotas import UNLIMITED, UserQuota, validate_quota
from hershy.domain.validation import validate_user_id
from hershy.service.ports import QuotaStore


class MemoryQuotaStore:
    """Keeps quotas in memory: for tests, and Hosts without a store."""

    def __init__(self) -> None:
        self.saved: dict[str, UserQuota] = {}

    def quotas(self) -> dict[str, UserQuota]:
        return dict(self.saved)

    async def save_quota(self, user_id: str, quota: UserQuota) -> None:
        self.saved[user_id] = quota


class Quotas:
    def __init__(self, store: QuotaStore | None = None) -> None:
        self._store = store or MemoryQuotaStore()
        self._limits = self._store.quotas()
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, int] = {}

    def get(self, user_id: str) -> UserQuota:
        return self._limits.get(user_id, UNLIMITED)

    async def set(self, user_id: str, quota: UserQuota) -> UserQuota:
        validate_user_id(user_id)
        validate_quota(quota)
        await self._store.save_quota(user_id, quota)
        self._limits[user_id] = quota
        return quota

    @contextlib.asynccontextmanager
    async def held(self, user_id: str) -> AsyncIterator[None]:
        """The user's lock, for a check and the commit it allows; forgotten when nobody holds it."""
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        self._holders[user_id] = self._holders.get(user_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._holders[user_id] -= 1
            if not self._holders[user_id]:
                del self._holders[user_id]
                del self._locks[user_id]
