"""The embedded default store: SQLite (WAL) in the data dir.

Two tables, written in one transaction per accepted event:
- `events`: the append-only log. Its `revision` is the Host-wide revision
  Watch resumes from; each row keeps the event and the program as it was
  right after it (so a Watch can resume from the log after a restart).
- `programs`: the latest state of every program, a snapshot kept current, so
  a restart reads one row per program instead of re-running every event.
  (The tests replay the log through the reducer and check it gives the same
  states.)

A change is acknowledged only once its transaction is on disk
(`synchronous=FULL`). A store that cannot be read fails loudly at start,
naming what is wrong; it never silently drops a program.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import secrets
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hershy.domain import events as ev
from hershy.domain.auth import TokenRecord
from hershy.domain.model import Program, Resources, State
from hershy.service.watch import Change, ChangeKind

FILE_NAME = "hershy.db"
SCHEMA_VERSION = 1
#: Older events are dropped at start, past this many; each program's latest row stays.
KEEP_EVENTS = 200_000

_EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        ev.ProgramCreated,
        ev.StartRequested,
        ev.StopRequested,
        ev.RestartRequested,
        ev.DeleteRequested,
        ev.BuildSucceeded,
        ev.BuildFailed,
        ev.ContainerCreated,
        ev.ContainerReady,
        ev.StartFailed,
        ev.ContainerExited,
        ev.ContainerStopped,
        ev.StopFailed,
        ev.RestartTimerFired,
        ev.TornDown,
        ev.TeardownFailed,
    )
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY,
    program_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    event TEXT NOT NULL,
    program TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_program ON events (program_id, revision);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    admin INTEGER NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS programs (
    program_id TEXT PRIMARY KEY,
    created_revision INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    program TEXT NOT NULL
);
"""


class StoreError(Exception):
    """The store cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True, slots=True)
class Recovered:
    """What the store holds: the live programs in creation order, and the last revision."""

    programs: list[Program]
    revision: int


# --- encoding ------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def encode_event(event: ev.Event) -> str:
    return json.dumps({"type": type(event).__name__, **_plain(event)}, separators=(",", ":"))


def decode_event(text: str) -> ev.Event:
    data = json.loads(text)
    cls = _EVENT_TYPES[data.pop("type")]
    if "resources" in data:
        data["resources"] = Resources(**data["resources"])
    event: ev.Event = cls(**data)
    return event


def encode_program(program: Program) -> str:
    return json.dumps(_plain(program), separators=(",", ":"))


def decode_program(text: str) -> Program:
    data = json.loads(text)
    data["state"] = State[data["state"]]
    data["resources"] = Resources(**data["resources"])
    return Program(**data)


# --- the store -------------------------------------------------------------------


class SqliteEventLog:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        # One thread does every write, in order; reads at start happen before it runs.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self._revision = 0
        #: This Host's id, made when the store is created; labels what the Host owns.
        self.host_id = ""

    # --- opening -----------------------------------------------------------------

    def open(self) -> Recovered:
        """Open (or create) the store and read every live program; StoreError if unreadable."""
        try:
            self._db = self._connect()
            self._check_version()
            recovered = self._recover()
            self._compact()
        except sqlite3.DatabaseError as error:
            raise StoreError(
                f"the store {self.path} cannot be read ({error}). It may be truncated or not "
                "a Hershy store. Nothing was changed: restore it from a backup, or move it "
                "away to start empty (every program it held would be forgotten)."
            ) from None
        self._revision = recovered.revision
        return recovered

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Reading the header proves it is a database before anything is written to it.
        db.execute("PRAGMA schema_version").fetchone()
        result = db.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _check_version(self) -> None:
        db = self._conn
        db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('host_id', ?)",
            (secrets.token_hex(6),),
        )
        self.host_id = db.execute("SELECT value FROM meta WHERE key = 'host_id'").fetchone()[0]
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            return
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store {self.path} was written by a newer Hershy (schema {version}; this "
                f"one reads up to {SCHEMA_VERSION}). Upgrade Hershy; the store was not changed."
            )

    def _recover(self) -> Recovered:
        programs = []
        for program_id, text in self._conn.execute(
            "SELECT program_id, program FROM programs ORDER BY created_revision"
        ):
            try:
                program = decode_program(text)
            except (ValueError, KeyError, TypeError) as error:
                raise StoreError(
                    f"the store {self.path} holds program {program_id} in a form this Hershy "
                    f"cannot read ({error!r}); nothing was dropped or changed"
                ) from None
            if program.state is not State.DELETED:
                programs.append(program)
        row = self._conn.execute("SELECT MAX(revision) FROM events").fetchone()
        return Recovered(programs, int(row[0] or 0))

    def _compact(self) -> None:
        """Drop the oldest events past KEEP_EVENTS, and what deleted programs left."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "DELETE FROM events WHERE revision <= (SELECT MAX(revision) FROM events) - ? "
            "AND revision NOT IN (SELECT revision FROM programs)",
            (KEEP_EVENTS,),
        )
        db.execute("COMMIT")

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    # --- writing --------------------------------------------------------------------

    async def append(self, program: Program, event: ev.Event) -> int:
        """Make the event durable; returns its revision. Callers append one at a time."""
        revision = self._revision + 1
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._write, revision, program, event)
        self._revision = revision
        return revision

    def _write(self, revision: int, program: Program, event: ev.Event) -> None:
        stored = encode_program(dataclasses.replace(program, revision=revision))
        kind = (
            ChangeKind.CREATED
            if isinstance(event, ev.ProgramCreated)
            else ChangeKind.DELETED
            if program.state is State.DELETED
            else ChangeKind.UPDATED
        )
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO events (revision, program_id, kind, event, program) "
                "VALUES (?, ?, ?, ?, ?)",
                (revision, program.id, kind.value, encode_event(event), stored),
            )
            db.execute(
                "INSERT INTO programs (program_id, created_revision, revision, program) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (program_id) DO UPDATE SET "
                "revision = excluded.revision, program = excluded.program",
                (program.id, revision, revision, stored),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # --- reading the log -----------------------------------------------------------

    def knows(self, program_id: str) -> bool:
        """Whether the program ever existed here (deleted ones keep their row)."""
        row = self._conn.execute(
            "SELECT 1 FROM programs WHERE program_id = ?", (program_id,)
        ).fetchone()
        return row is not None

    def owner(self, program_id: str) -> str | None:
        """The user the program belongs (or belonged) to, from its stored row."""
        row = self._conn.execute(
            "SELECT program FROM programs WHERE program_id = ?", (program_id,)
        ).fetchone()
        return None if row is None else decode_program(row[0]).user_id

    def changes_after(self, revision: int, limit: int = 100_000) -> tuple[int, list[Change]]:
        """(oldest revision kept, the changes after `revision`) for resuming a Watch."""
        db = self._conn
        oldest = db.execute("SELECT MIN(revision) FROM events").fetchone()[0] or 1
        rows = db.execute(
            "SELECT kind, event, program FROM events WHERE revision > ? ORDER BY revision LIMIT ?",
            (revision, limit),
        ).fetchall()
        changes = [
            Change(ChangeKind(kind), decode_program(program), decode_event(event))
            for kind, event, program in rows
        ]
        return int(oldest), changes

    def events_of(self, program_id: str) -> list[tuple[int, ev.Event, Program]]:
        """Every event of a program still in the log, with the state after it."""
        rows = self._conn.execute(
            "SELECT revision, event, program FROM events WHERE program_id = ? ORDER BY revision",
            (program_id,),
        ).fetchall()
        return [(rev, decode_event(event), decode_program(program)) for rev, event, program in rows]

    # --- tokens ---------------------------------------------------------------------

    def tokens(self) -> list[TokenRecord]:
        rows = self._conn.execute(
            "SELECT id, secret_hash, user_id, admin, created_at, revoked_at FROM tokens "
            "ORDER BY created_at, id"
        ).fetchall()
        return [TokenRecord(i, h, u, bool(a), c, r) for i, h, u, a, c, r in rows]

    async def save_token(self, record: TokenRecord) -> None:
        await self._in_writer(
            "INSERT INTO tokens (id, secret_hash, user_id, admin, created_at, revoked_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.secret_hash,
                record.user_id,
                int(record.admin),
                record.created_at,
                record.revoked_at,
            ),
        )

    async def revoke_token(self, token_id: str, at: float) -> None:
        await self._in_writer(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, token_id)
        )

    async def _in_writer(self, sql: str, parameters: tuple[object, ...]) -> None:
        def write() -> None:
            self._conn.execute(sql, parameters)  # autocommit: one statement, durable

        await asyncio.get_running_loop().run_in_executor(self._writer, write)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None
