"""Programs' secrets: write-only values, sealed in the store, redacted from logs.

The store only ever sees a secret sealed (`SecretBox`, AES-GCM under the Host
key); the plain value lives in this process's memory, where the runtime takes
it when a container starts and the log redactor looks for it. No answer, log
line, event or error carries a value: callers get `SecretInfo` (name,
version, times).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from hershy.domain.config import (
    SecretInfo,
    check_secret_room,
    validate_secret_name,
    validate_secret_value,
)
from hershy.domain.errors import NotFound
from hershy.domain.model import LogLine, LogStream
from hershy.service.ports import Clock, LogStore


@dataclass(frozen=True, slots=True)
class SealedSecret:
    """A secret as the store keeps it: its value sealed, bound to its program, name and version."""

    program_id: str
    info: SecretInfo
    sealed: bytes


class SecretBox(Protocol):
    """Seals values with the Host key; `context` is bound in (a row moved elsewhere fails)."""

    def seal(self, value: bytes, context: bytes) -> bytes: ...

    def open(self, sealed: bytes, context: bytes) -> bytes: ...


class SecretStore(Protocol):
    def secrets(self) -> list[SealedSecret]: ...

    async def save_secret(self, secret: SealedSecret) -> None: ...

    async def delete_secret(self, program_id: str, name: str) -> None: ...

    async def delete_secrets(self, program_id: str) -> None: ...


class MemorySecretStore:
    """Keeps sealed secrets in memory: for tests, and Hosts without a store."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], SealedSecret] = {}

    def secrets(self) -> list[SealedSecret]:
        return list(self.rows.values())

    async def save_secret(self, secret: SealedSecret) -> None:
        self.rows[(secret.program_id, secret.info.name)] = secret

    async def delete_secret(self, program_id: str, name: str) -> None:
        self.rows.pop((program_id, name), None)

    async def delete_secrets(self, program_id: str) -> None:
        for key in [key for key in self.rows if key[0] == program_id]:
            del self.rows[key]


def context_of(program_id: str, name: str, version: int) -> bytes:
    """What a sealed value is bound to: a row copied to another program or name fails to open."""
    return f"hershy-secret\x00{program_id}\x00{name}\x00{version}".encode()


class Secrets:
    def __init__(self, store: SecretStore, box: SecretBox, clock: Clock) -> None:
        self._store = store
        self._box = box
        self._clock = clock
        #: One lock per program (its count and size are checked with the change they
        #: allow); one tenant's writes never queue another's.
        self._locks: dict[str, asyncio.Lock] = {}
        #: program id -> name -> (what may be known, the value)
        self._held: dict[str, dict[str, tuple[SecretInfo, bytes]]] = {}
        for row in store.secrets():
            info = row.info
            value = box.open(row.sealed, context_of(row.program_id, info.name, info.version))
            self._held.setdefault(row.program_id, {})[info.name] = (info, value)
        #: program id -> what its log lines are searched for, longest first (kept current).
        self._needles: dict[str, list[tuple[str, str]]] = {}
        for program_id in self._held:
            self._renew_needles(program_id)

    def list(self, program_id: str) -> list[SecretInfo]:
        held = self._held.get(program_id, {})
        return [held[name][0] for name in sorted(held)]

    async def set(
        self, program_id: str, name: str, value: bytes, as_env: bool = False
    ) -> SecretInfo:
        """Create or replace (a new version); the next start of the program uses it."""
        validate_secret_name(name)
        validate_secret_value(value)
        async with self._locked(program_id):
            held = self._held.get(program_id, {})
            check_secret_room({key: len(item[1]) for key, item in held.items()}, name, len(value))
            now = self._clock.now()
            previous = held.get(name)
            if previous is None:
                info = SecretInfo(name, 1, now, now, as_env)
            else:
                old = previous[0]
                info = replace(old, version=old.version + 1, updated_at=now, as_env=as_env)
            sealed = self._box.seal(value, context_of(program_id, name, info.version))
            await self._store.save_secret(SealedSecret(program_id, info, sealed))
            self._held.setdefault(program_id, {})[name] = (info, bytes(value))
            self._renew_needles(program_id)
            return info

    async def delete(self, program_id: str, name: str) -> SecretInfo:
        validate_secret_name(name, "name")
        async with self._locked(program_id):
            held = self._held.get(program_id, {})
            if name not in held:
                raise NotFound(f"secret {name} of program {program_id} not found")
            await self._store.delete_secret(program_id, name)
            info, _ = held.pop(name)
            if not held:
                self._held.pop(program_id, None)
            self._renew_needles(program_id)
            return info

    async def forget(self, program_id: str) -> None:
        """The program is gone: so are its secrets."""
        async with self._locked(program_id):
            await self._store.delete_secrets(program_id)
            self._held.pop(program_id, None)
            self._renew_needles(program_id)
        self._locks.pop(program_id, None)

    def _locked(self, program_id: str) -> asyncio.Lock:
        return self._locks.setdefault(program_id, asyncio.Lock())

    async def keep_only(self, live: Collection[str]) -> None:
        """Drop the secrets of programs that are gone (a Host stopped between a delete's
        last step and the removal of its secrets)."""
        for program_id in [key for key in self._held if key not in live]:
            await self.forget(program_id)

    # --- what the runtime and the log redactor see ----------------------------------

    def values(self, program_id: str) -> dict[str, bytes]:
        """Each secret's value by name, as the program is to get them (the `SecretValues` port)."""
        return {name: item[1] for name, item in self._held.get(program_id, {}).items()}

    def redact(self, program_id: str, text: str) -> str:
        """`text` with every secret value of the program replaced by `[secret NAME]`.

        Longest values first, so one value inside another is never half replaced.
        A value is looked for as UTF-8 text, and so is each of its lines (a program
        prints a multi-line value line by line).
        """
        for piece, name in self._needles.get(program_id, ()):
            if piece in text:
                text = text.replace(piece, f"[secret {name}]")
        return text

    def _renew_needles(self, program_id: str) -> None:
        held = self._held.get(program_id)
        if not held:
            self._needles.pop(program_id, None)
            return
        needles: list[tuple[str, str]] = []
        for name, (_, value) in held.items():
            decoded = value.decode("utf-8", errors="replace")
            pieces = {decoded.strip("\r\n"), *(part.strip("\r") for part in decoded.split("\n"))}
            needles.extend((piece, name) for piece in pieces if piece)
        self._needles[program_id] = sorted(needles, key=lambda item: -len(item[0]))


class RedactingLogStore:
    """A program's log as the runtime writes it, with the program's secrets taken out first.

    Every line the runtime copies (builds, stdout, stderr, its own notes) goes
    through here before it reaches the log file, so a printed secret is never
    written. The Host's own notes never hold a value.
    """

    def __init__(self, inner: LogStore, secrets: Secrets) -> None:
        self._inner = inner
        self._secrets = secrets

    def write(self, program_id: str, line: LogLine) -> None:
        redacted = self._secrets.redact(program_id, line.text)
        if redacted != line.text:
            line = replace(line, text=redacted)
        self._inner.write(program_id, line)

    def lines(
        self, program_id: str, tail: int | None, streams: Collection[LogStream], follow: bool
    ) -> AsyncIterator[LogLine]:
        return self._inner.lines(program_id, tail, streams, follow)

    def last_mark(self, program_id: str, prefix: str) -> tuple[str, int] | None:
        return self._inner.last_mark(program_id, prefix)

    async def prepare(self, program_id: str) -> None:
        await self._inner.prepare(program_id)

    async def remove(self, program_id: str) -> None:
        await self._inner.remove(program_id)


class SecretValues(Protocol):
    """What a runtime needs to hand a program its secrets when it starts a container."""

    def values(self, program_id: str) -> Mapping[str, bytes]: ...
