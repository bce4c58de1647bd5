"""Names, environment variables and secrets: validation, the resolver, sealing, redaction."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hershy.adapters import host_key
from hershy.adapters.docker.compose import ContainerRequest, compose_spec, contract_violations
from hershy.adapters.docker.runtime import docker_create_args, numeric_user
from hershy.adapters.fake_runtime import FakeEffectHandler
from hershy.adapters.log_files import FileLogStore
from hershy.adapters.memory_event_log import MemoryEventLog
from hershy.adapters.source_files import FileSourceStore
from hershy.adapters.sqlite_store import SqliteEventLog
from hershy.adapters.system import SystemClock
from hershy.domain import config
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.errors import AlreadyExists, InvalidArgument, NotFound, QuotaExceeded, TooLarge
from hershy.domain.model import LogLine, LogStream, Resources, State
from hershy.domain.reducer import Transition, reduce
from hershy.service.registry import Registry
from hershy.service.secrets import MemorySecretStore, RedactingLogStore, Secrets, context_of
from tests.unit import lifecycle_table

MAXIMUM = Resources(memory_bytes=4 * 1024**3, milli_cpus=2000, pids=4096)
SECURE = frozenset({"runsc"})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        self.t += 1
        return self.t


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def new_program_id(self) -> str:
        self.n += 1
        return f"prog-{self.n:012x}"

    def new_token(self) -> tuple[str, str]:
        raise NotImplementedError


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["bot", "a", "my-bot-2", "a" * 63])
def test_good_aliases(alias: str) -> None:
    assert config.validate_alias(alias) == alias


@pytest.mark.parametrize(
    "alias", ["", "prog-1a2b", "Bot", "1bot", "-bot", "a" * 64, "b_t", "bot/x", "bøt", "bot\n"]
)
def test_bad_aliases(alias: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        config.validate_alias(alias)
    assert caught.value.field == "alias"


def test_env_is_sorted_and_bounded() -> None:
    assert config.validate_env({"B": "2", "A": "1"}) == (("A", "1"), ("B", "2"))
    for bad in ({"lower": "x"}, {"1A": "x"}, {"HERSHY_X": "x"}, {"hershy_x": "x"}, {"A": "a\0b"}):
        with pytest.raises(InvalidArgument):
            config.validate_env(bad)
    with pytest.raises(TooLarge):
        config.validate_env({"A": "x" * (config.MAX_ENV_VALUE_BYTES + 1)})
    with pytest.raises(QuotaExceeded):
        config.validate_env({f"V{i}": "" for i in range(config.MAX_ENV_VARS + 1)})
    assert config.changed_env((("A", "1"), ("B", "2")), {"C": "3"}, ["A"]) == (
        ("B", "2"),
        ("C", "3"),
    )
    with pytest.raises(InvalidArgument):
        config.changed_env((), {"A": "1"}, ["A"])


def test_secret_limits_never_repeat_the_value() -> None:
    value = b"s3cr3t-" + b"x" * config.MAX_SECRET_BYTES
    with pytest.raises(TooLarge) as caught:
        config.validate_secret_value(value)
    assert b"s3cr3t" not in str(caught.value).encode()
    with pytest.raises(InvalidArgument):
        config.validate_secret_value(b"")
    for bad in ("", "1X", "HERSHY_TOKEN", "a-b", "a/b", "x" * 65):
        with pytest.raises(InvalidArgument):
            config.validate_secret_name(bad)
    with pytest.raises(QuotaExceeded):
        config.check_secret_room({f"S{i}": 1 for i in range(config.MAX_SECRETS)}, "NEW", 1)
    config.check_secret_room({f"S{i}": 1 for i in range(config.MAX_SECRETS)}, "S0", 1)
    with pytest.raises(QuotaExceeded):
        config.check_secret_room({"A": config.MAX_SECRETS_TOTAL_BYTES}, "B", 1)


# --- sealing -------------------------------------------------------------------------------


def test_the_host_key_seals_and_binds_the_context(tmp_path: Path) -> None:
    box = host_key.load_or_create(tmp_path, store_has_secrets=False)
    key_file = tmp_path / host_key.KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    sealed = box.seal(b"hunter2", b"ctx")
    assert b"hunter2" not in sealed
    assert box.open(sealed, b"ctx") == b"hunter2"
    with pytest.raises(host_key.HostKeyError):
        box.open(sealed, b"another program")
    # The same key next time; another key opens nothing.
    again = host_key.load_or_create(tmp_path, store_has_secrets=True)
    assert again.open(sealed, b"ctx") == b"hunter2"
    other = host_key.HostKeyBox(os.urandom(32))
    with pytest.raises(host_key.HostKeyError):
        other.open(sealed, b"ctx")


def test_a_missing_key_beside_sealed_secrets_stops_the_host(tmp_path: Path) -> None:
    with pytest.raises(host_key.HostKeyError, match="missing"):
        host_key.load_or_create(tmp_path, store_has_secrets=True)
    host_key.load_or_create(tmp_path, store_has_secrets=False)
    (tmp_path / host_key.KEY_FILE).chmod(0o644)
    with pytest.raises(host_key.HostKeyError, match="readable by others"):
        host_key.load_or_create(tmp_path, store_has_secrets=False)


async def test_secrets_round_trip_through_the_store_sealed(tmp_path: Path) -> None:
    store = SqliteEventLog(tmp_path)
    store.open()
    box = host_key.load_or_create(tmp_path, store_has_secrets=False)
    secrets = Secrets(store, box, Clock())
    info = await secrets.set("prog-1", "API_KEY", b"plain-value-123")
    assert info.version == 1
    info = await secrets.set("prog-1", "API_KEY", b"plain-value-456")
    assert info.version == 2
    store.close()
    for name in ("hershy.db", "hershy.db-wal"):
        path = tmp_path / name
        if path.exists():
            assert b"plain-value" not in path.read_bytes()
    reopened = SqliteEventLog(tmp_path)
    reopened.open()
    again = Secrets(reopened, host_key.load_or_create(tmp_path, store_has_secrets=True), Clock())
    assert again.values("prog-1") == {"API_KEY": b"plain-value-456"}
    assert [s.version for s in again.list("prog-1")] == [2]
    # A row moved to another program does not open.
    (row,) = reopened.secrets()
    with pytest.raises(host_key.HostKeyError):
        box.open(row.sealed, context_of("prog-2", "API_KEY", 2))
    await again.keep_only(set())
    assert reopened.secrets() == []
    reopened.close()


# --- redaction -----------------------------------------------------------------------------


async def test_printed_values_are_redacted_before_the_log_is_written(tmp_path: Path) -> None:
    secrets = Secrets(MemorySecretStore(), _Plain(), Clock())
    await secrets.set("p1", "TOKEN", b"abc123xyz")
    await secrets.set("p1", "LONG", b"abc123xyz-and-more")
    await secrets.set("p1", "PEM", b"-----BEGIN-----\nline-one-secret\nline-two-secret\n")
    await secrets.set("p2", "OTHER", b"other-value")
    logs = FileLogStore(tmp_path)
    redacting = RedactingLogStore(logs, secrets)
    for text in (
        "token=abc123xyz!",
        "long=abc123xyz-and-more",
        "line-one-secret",
        "other-value stays: not p1's",
    ):
        redacting.write("p1", LogLine(1.0, LogStream.STDOUT, 1, text))
    written = [line.text async for line in logs.lines("p1", None, (), False)]
    assert written == [
        "token=[secret TOKEN]!",
        "long=[secret LONG]",
        "[secret PEM]",
        "other-value stays: not p1's",
    ]
    logs.close()
    assert_not_on_disk(tmp_path, [b"abc123xyz", b"line-one-secret"])


def assert_not_on_disk(root: Path, values: list[bytes]) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for value in values:
                assert value not in blob, path


class _Plain:
    def seal(self, value: bytes, context: bytes) -> bytes:
        return value

    def open(self, sealed: bytes, context: bytes) -> bytes:
        return sealed


# --- the resolver --------------------------------------------------------------------------


async def test_the_resolver(tmp_path: Path) -> None:
    sources = FileSourceStore(tmp_path)
    logs = FileLogStore(sources.root)
    registry = Registry(
        handler=FakeEffectHandler(sources, logs),
        sources=sources,
        logs=logs,
        clock=Clock(),
        ids=Ids(),
        timers=SystemClock(),
        event_log=MemoryEventLog(),
    )
    async with registry:
        alices = await registry.create("alice", "FROM scratch\n", {}, alias="bot")
        bobs = await registry.create("bob", "FROM scratch\n", {}, alias="bot")
        with pytest.raises(AlreadyExists):
            await registry.create("alice", "FROM scratch\n", {}, alias="bot")
        assert registry.resolve("programs/bot", "alice") == alices.id
        assert registry.resolve("programs/bot", "bob") == bobs.id
        assert registry.resolve(f"programs/{alices.id}", "alice") == alices.id
        assert registry.resolve("users/bob/programs/bot", "admin", admin=True) == bobs.id
        assert registry.resolve("users/alice/programs/bot", "alice") == alices.id
        messages = []
        for name, caller in (
            ("users/bob/programs/bot", "alice"),
            ("users/bob/programs/nope", "alice"),
            (f"programs/{bobs.id}", "alice"),
            ("programs/nope", "alice"),
        ):
            with pytest.raises(NotFound) as caught:
                registry.resolve(name, caller)
            messages.append(caught.value.message.split()[0:1] + caught.value.message.split()[2:])
        assert all(message == messages[0] for message in messages)
        for bad in ("bot", "programs/", "users/x/bot", "users//programs/bot", "programs/a/b"):
            with pytest.raises(InvalidArgument):
                registry.resolve(bad, "alice")
        renamed = await registry.rename(alices.id, "bot-2")
        assert renamed.alias == "bot-2"
        with pytest.raises(NotFound):
            registry.resolve("programs/bot", "alice")
        assert registry.resolve("programs/bot-2", "alice") == alices.id
        await registry.delete(alices.id)
        await registry.wait(alices.id, registry.get(alices.id).state.DELETED, 10)
        with pytest.raises(NotFound):
            registry.resolve("programs/bot-2", "alice")
        again = await registry.create("alice", "FROM scratch\n", {}, alias="bot-2")
        assert registry.resolve("programs/bot-2", "alice") == again.id


# --- the container: variables and the secrets folder -----------------------------------------


def _spec_with(secrets_dir: str | None) -> dict[str, Any]:
    return compose_spec(
        ContainerRequest(
            host_id="h-1",
            program_id="prog-1",
            run=1,
            build_id="b-1",
            image="sha256:abc",
            host_port=19005,
            state_dir="/var/lib/hershy/programs/prog-1/state",
            resources=Resources(),
            runtime="runsc",
            env=(("MODE", "live"),),
            secrets_dir=secrets_dir,
        )
    )


def test_the_spec_names_the_secrets_folder_read_only_and_never_a_value() -> None:
    spec = _spec_with("/run/hershy/h-1/prog-1")
    service = spec["services"]["program"]
    assert service["environment"] == {"MODE": "live"}
    assert service["volumes"][1] == {
        "type": "bind",
        "source": "/run/hershy/h-1/prog-1",
        "target": "/run/secrets",
        "read_only": True,
    }
    assert contract_violations(spec, allowed_runtimes=SECURE, maximum=MAXIMUM) == []
    arguments = docker_create_args(spec)
    assert arguments["volumes"]["/run/hershy/h-1/prog-1"] == {"bind": "/run/secrets", "mode": "ro"}
    assert arguments["environment"] == {"MODE": "live"}
    assert len(_spec_with(None)["services"]["program"]["volumes"]) == 1  # no secrets: no mount
    assert "sk-" not in json.dumps(spec)


@pytest.mark.parametrize(
    "change",
    [
        lambda volume: volume.update(read_only=False),
        lambda volume: volume.update(target="/etc"),
        lambda volume: volume.update(type="volume"),
    ],
)
def test_a_secrets_volume_that_breaks_the_contract_is_refused(change: Any) -> None:
    spec = _spec_with("/run/hershy/h-1/prog-1")
    change(spec["services"]["program"]["volumes"][1])
    problems = contract_violations(spec, allowed_runtimes=SECURE, maximum=MAXIMUM)
    assert len(problems) == 1
    assert "only volume besides /state" in problems[0]


def test_a_start_carries_the_programs_variables() -> None:
    program = replace(
        lifecycle_table.program_in(State.BUILDING), env=(("MODE", "live"),), alias="bot"
    )
    outcome = reduce(program, ev.BuildSucceeded(2000.0, program.run, "img-2"))
    assert isinstance(outcome, Transition)
    (start,) = outcome.effects
    assert isinstance(start, fx.StartContainer)
    assert start.env == (("MODE", "live"),)
    changed = reduce(outcome.program, ev.EnvChanged(2001.0, (("MODE", "paper"),)))
    assert isinstance(changed, Transition)
    assert changed.effects == ()  # what runs goes on: a restart picks it up
    assert changed.program.env == (("MODE", "paper"),)
    assert changed.program.state is State.STARTING


@pytest.mark.parametrize(
    ("user", "owner"),
    [
        ("", None),
        ("0", None),
        ("root", None),
        ("app", None),
        ("1000", (1000, 1000)),
        ("1000:2000", (1000, 2000)),
        ("1000:staff", None),
        ("-1", None),
    ],
)
def test_the_images_numeric_user_owns_its_secrets(user: str, owner: tuple[int, int] | None) -> None:
    assert numeric_user(user) == owner
