"""The event log kept in memory: for tests and tools that need no store."""

from __future__ import annotations

from hershy.domain import events as ev
from hershy.domain.model import Program


class MemoryEventLog:
    """Numbers events; keeps nothing (a Host restart forgets every program)."""

    def __init__(self) -> None:
        self._revision = 0
        self._owners: dict[str, str] = {}

    async def append(self, program: Program, event: ev.Event) -> int:
        self._revision += 1
        self._owners[program.id] = program.user_id
        return self._revision

    def owner(self, program_id: str) -> str | None:
        return self._owners.get(program_id)
