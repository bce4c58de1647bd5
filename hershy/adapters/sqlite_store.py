"""The embedded default store: SQLite (WAL) in the data dir.

Two tables, written together for each accepted event (beside them,
`tokens` and the admin's `user_quotas`):
- `events`: the append-only log. Its `revision` is the Host-wide revision
  Watch resumes from; each row keeps the event and the program as it was
  right after it (so a Watch can resume from the log after a restart).
- `programs`: the latest state of every program, a snapshot kept current, so
  a restart reads one row per program instead of re-running every event.
  (The tests replay the log through the reducer and check it gives the same
  states.)

A change is acknowledged only once its transaction is on disk
(`synchronous=FULL`); the events appended while one transaction is on its
way to disk share the next (group commit: one fsync for many). A store that
cannot be read fails loudly at start, naming what is wrong; it never
silently drops a program. A new store is begun only in a data dir that holds
nothing of a Host: a missing, empty or table-less store next to programs'
folders was lost, not never made. Events and programs are stored as JSON by
`json_codec`, which reads back every event class there is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hershy.adapters.json_codec import (
    decode_event,
    decode_program,
    encode_event,
    encode_program,
    from_plain,
    to_plain,
)
from hershy.adapters.source_files import FileSourceStore
from hershy.domain import events as ev
from hershy.domain.auth import TokenRecord
from hershy.domain.config import SecretInfo
from hershy.domain.model import Program, Revision, State
from hershy.domain.quotas import UserQuota
from hershy.domain.revisions import revision_of
from hershy.service.secrets import SealedSecret
from hershy.service.watch import Change, ChangeKind

FILE_NAME = "hershy.db"
SCHEMA_VERSION = 1
#: Older events are dropped at start, past this many; each program's latest row stays.
KEEP_EVENTS = 200_000

#: The tables every Hershy store has had from the first; newer ones are added when missing.
_CORE_TABLES = frozenset({"meta", "events", "programs"})
#: SQLite's files next to the store: the write-ahead log and a rollback journal.
_LOG_SUFFIXES = ("-wal", "-journal")

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
-- Added after schema 1 was released: created in place when an older store opens
-- (an older Hershy ignores it). NULL: no limit.
CREATE TABLE IF NOT EXISTS user_quotas (
    user_id TEXT PRIMARY KEY,
    max_programs INTEGER,
    max_memory_bytes INTEGER,
    max_milli_cpus INTEGER,
    max_state_bytes INTEGER
);
-- Added after schema 1 too: programs' secrets, each value sealed with the Host key
-- (hershy/adapters/host_key.py, kept in its own file): never a plain value here.
CREATE TABLE IF NOT EXISTS secrets (
    program_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    as_env INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (program_id, name)
);

-- Added with rollouts, in place like user_quotas: each program's revisions (what each
-- version ran, who made it, when), written with the event that made it.
CREATE TABLE IF NOT EXISTS program_revisions (
    program_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    revision TEXT NOT NULL,
    PRIMARY KEY (program_id, number)
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


@dataclass(frozen=True, slots=True)
class _Pending:
    """An appended event waiting for its transaction; `durable` gets its revision."""

    revision: int
    program: Program
    event: ev.Event
    durable: asyncio.Future[int]


# --- the store -------------------------------------------------------------------


class SqliteEventLog:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / FILE_NAME
        # One thread does every write, in order; reads at start happen before it runs.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self._revision = 0
        #: Appended events waiting for the next transaction, and the one on its way.
        self._pending: list[_Pending] = []
        self._in_flight: asyncio.Future[None] | None = None
        #: This Host's id, made when the store is created; labels what the Host owns.
        self.host_id = ""

    # --- opening -----------------------------------------------------------------

    def open(self) -> Recovered:
        """Open (or create) the store and read every live program; StoreError if unreadable.

        Nothing is written until the store is known to be readable, or known to be
        a new one in a data dir that holds nothing else: a refused store is left
        exactly as it was.
        """
        try:
            self._inspect()
            self._db = self._connect()
            self._prepare()
            recovered = self._recover()
            self._compact()
        except sqlite3.DatabaseError as error:
            self._close_connection()
            raise StoreError(
                f"the store {self.path} cannot be read ({error}). It may be truncated or not "
                "a Hershy store. Nothing was changed: restore it from a backup, or move the "
                "whole data dir away to start empty (every program it held would be forgotten)."
            ) from None
        except BaseException:
            self._close_connection()
            raise
        self._revision = recovered.revision
        return recovered

    def _inspect(self) -> None:
        """Refuse, before writing a byte, a store that is unreadable or must not be begun anew."""
        blank = self._why_blank()
        if blank is None:
            return
        held = self._what_the_data_dir_holds()
        if held:
            raise StoreError(
                f"the store {self.path} {blank}, but the data dir {self.data_dir} holds "
                f"{' and '.join(held)}: the store was lost or damaged, and starting a new one "
                "would forget every program and make a new admin token. Nothing was changed. "
                f"Restore {self.path} from a backup; or, to really start afresh, move the "
                "whole data dir away."
            )

    def _why_blank(self) -> str | None:
        """What makes the store blank (missing, empty, no tables); None if it holds a store."""
        if not self.path.exists():
            return "does not exist"
        if self.path.is_file() and self.path.stat().st_size == 0:
            return "is empty (0 bytes)"
        # Read-only: even the checkpoint SQLite does on closing cannot touch the file. With
        # no write-ahead log the file is the whole store: read it as immutable, which makes
        # no -wal or -shm file either. Else the log must be read too (SQLite needs its -shm).
        wal = self.path.with_name(self.path.name + "-wal")
        has_log = wal.is_file() and wal.stat().st_size > 0
        mode = "mode=ro" if has_log else "immutable=1"
        db = sqlite3.connect(f"{self.path.absolute().as_uri()}?{mode}", uri=True)
        try:
            # Reading the header proves it is a database before anything else.
            db.execute("PRAGMA schema_version").fetchone()
            result = db.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {result}")
            tables = {
                row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if not tables:
                return "holds no tables"
            missing = _CORE_TABLES - tables
            if missing == _CORE_TABLES:
                raise StoreError(
                    f"the store {self.path} is an SQLite database but not a Hershy store (its "
                    f"tables: {', '.join(sorted(tables))}). Nothing was changed: give the Host "
                    "another --data-dir, or move the whole data dir away."
                )
            if missing:
                raise StoreError(
                    f"the store {self.path} lacks its tables {', '.join(sorted(missing))}: it "
                    "is damaged. Nothing was changed: restore it from a backup."
                )
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        finally:
            db.close()
        if row is not None and not str(row[0]).isdigit():
            raise StoreError(
                f"the store {self.path} names its schema {row[0]!r}, not a number: it is "
                "damaged. Nothing was changed: restore it from a backup."
            )
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"the store {self.path} was written by a newer Hershy (schema {row[0]}; this "
                f"one reads up to {SCHEMA_VERSION}). Upgrade Hershy; the store was not changed."
            )
        return None

    def _what_the_data_dir_holds(self) -> list[str]:
        """What a Host left in the data dir besides the store: the signs it is not a new one."""
        held = []
        programs = FileSourceStore(self.data_dir).root
        entries = os.listdir(programs) if programs.is_dir() else []
        if entries:
            held.append(f"{len(entries)} entries in {programs} (programs' sources, state, logs)")
        for suffix in _LOG_SUFFIXES:
            side = self.path.with_name(self.path.name + suffix)
            if side.is_file() and side.stat().st_size > 0:
                held.append(f"SQLite's {side.name} ({side.stat().st_size} bytes)")
        return held

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _prepare(self) -> None:
        """The tables and the Host's id, made where missing (a new store, or an older one)."""
        db = self._conn
        db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('host_id', ?)",
            (secrets.token_hex(6),),
        )
        db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        self.host_id = db.execute("SELECT value FROM meta WHERE key = 'host_id'").fetchone()[0]

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
        """Make the event durable; returns its revision once it is on disk.

        Callers may append at once (a supervisor each): the revision is given at
        the call, in call order, and the events waiting while a transaction is on
        its way to disk go together in the next one, one fsync for them all
        (group commit). Each caller is answered only when its own transaction has
        committed; if it fails, every caller in it gets the error.
        """
        self._revision += 1
        pending = _Pending(
            self._revision, program, event, asyncio.get_running_loop().create_future()
        )
        self._pending.append(pending)
        self._write_next_batch()
        return await pending.durable

    def _write_next_batch(self) -> None:
        """Start the next transaction of what waits, unless one is on its way."""
        if self._in_flight is not None or not self._pending:
            return
        batch, self._pending = self._pending, []
        rows = [(each.revision, each.program, each.event) for each in batch]
        job = asyncio.get_running_loop().run_in_executor(self._writer, self._write, rows)
        self._in_flight = job

        def written(job: asyncio.Future[None]) -> None:
            self._in_flight = None
            failure = None if job.cancelled() else job.exception()
            for each in batch:
                if each.durable.done():
                    continue  # its caller was cancelled; the event is written all the same
                if job.cancelled():
                    each.durable.set_exception(StoreError("the store closed before the write"))
                elif failure is not None:
                    each.durable.set_exception(failure)
                else:
                    each.durable.set_result(each.revision)
            self._write_next_batch()

        job.add_done_callback(written)

    def _write(self, batch: list[tuple[int, Program, ev.Event]]) -> None:
        events = []
        programs = []
        made_revisions = []
        deleted = []
        for revision, program, event in batch:
            stored = encode_program(dataclasses.replace(program, revision=revision))
            kind = (
                ChangeKind.CREATED
                if isinstance(event, ev.ProgramCreated)
                else ChangeKind.DELETED
                if program.state is State.DELETED
                else ChangeKind.UPDATED
            )
            events.append((revision, program.id, kind.value, encode_event(event), stored))
            programs.append((program.id, revision, revision, stored))
            # Each event of the batch, not only its last: one transaction holds many programs'.
            made = revision_of(program, event)
            if made is not None:
                # As text: SQLite keeps it an integer when it fits in 64 bits.
                made_revisions.append(
                    (program.id, str(made.number), json.dumps(to_plain(made, omit_defaults=True)))
                )
            if program.state is State.DELETED:
                deleted.append((program.id,))
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO events (revision, program_id, kind, event, program) "
                "VALUES (?, ?, ?, ?, ?)",
                events,
            )
            # In revision order: a program's later row wins within the batch too.
            db.executemany(
                "INSERT INTO programs (program_id, created_revision, revision, program) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (program_id) DO UPDATE SET "
                "revision = excluded.revision, program = excluded.program",
                programs,
            )
            db.executemany(
                "INSERT OR REPLACE INTO program_revisions (program_id, number, revision) "
                "VALUES (?, ?, ?)",
                made_revisions,
            )
            db.executemany("DELETE FROM program_revisions WHERE program_id = ?", deleted)
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

    # --- revisions ------------------------------------------------------------------

    def revisions_of(self, program_id: str) -> list[Revision]:
        """The program's revision records, oldest first."""
        return [
            from_plain(Revision, json.loads(text))
            for (text,) in self._conn.execute(
                "SELECT revision FROM program_revisions WHERE program_id = ? ORDER BY number",
                (program_id,),
            )
        ]

    def revisions(self) -> dict[str, list[Revision]]:
        """Every live program's revision records, oldest first."""
        kept: dict[str, list[Revision]] = {}
        for program_id, text in self._conn.execute(
            "SELECT program_id, revision FROM program_revisions ORDER BY program_id, number"
        ):
            record: Revision = from_plain(Revision, json.loads(text))
            kept.setdefault(program_id, []).append(record)
        return kept

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

    # --- quotas ---------------------------------------------------------------------

    def quotas(self) -> dict[str, UserQuota]:
        rows = self._conn.execute(
            "SELECT user_id, max_programs, max_memory_bytes, max_milli_cpus, max_state_bytes "
            "FROM user_quotas"
        ).fetchall()
        return {user: UserQuota(*limits) for user, *limits in rows}

    async def save_quota(self, user_id: str, quota: UserQuota) -> None:
        await self._in_writer(
            "INSERT INTO user_quotas (user_id, max_programs, max_memory_bytes, max_milli_cpus, "
            "max_state_bytes) VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
            "max_programs = excluded.max_programs, max_memory_bytes = excluded.max_memory_bytes, "
            "max_milli_cpus = excluded.max_milli_cpus, max_state_bytes = excluded.max_state_bytes",
            (user_id, quota.programs, quota.memory_bytes, quota.milli_cpus, quota.state_bytes),
        )

    # --- secrets (sealed) -------------------------------------------------------------

    def secrets(self) -> list[SealedSecret]:
        rows = self._conn.execute(
            "SELECT program_id, name, version, created_at, updated_at, as_env, sealed "
            "FROM secrets ORDER BY program_id, name"
        ).fetchall()
        return [
            SealedSecret(program, SecretInfo(name, version, created, updated, bool(env)), sealed)
            for program, name, version, created, updated, env, sealed in rows
        ]

    async def save_secret(self, secret: SealedSecret) -> None:
        info = secret.info
        await self._in_writer(
            "INSERT INTO secrets (program_id, name, version, created_at, updated_at, as_env, "
            "sealed) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (program_id, name) DO UPDATE SET "
            "version = excluded.version, updated_at = excluded.updated_at, "
            "as_env = excluded.as_env, sealed = excluded.sealed",
            (
                secret.program_id,
                info.name,
                info.version,
                info.created_at,
                info.updated_at,
                int(info.as_env),
                secret.sealed,
            ),
        )

    async def delete_secret(self, program_id: str, name: str) -> None:
        await self._in_writer(
            "DELETE FROM secrets WHERE program_id = ? AND name = ?", (program_id, name)
        )

    async def delete_secrets(self, program_id: str) -> None:
        await self._in_writer("DELETE FROM secrets WHERE program_id = ?", (program_id,))

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._close_connection()

    def _close_connection(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
