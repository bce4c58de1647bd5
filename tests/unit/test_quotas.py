"""Quotas, pure and over the service: what counts, what is refused, and how it is stored."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from dataclasses import replace
from pathlib import Path

import click
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from hershy.adapters.fake_runtime import FakeEffectHandler
from hershy.adapters.log_files import FileLogStore
from hershy.adapters.memory_event_log import MemoryEventLog
from hershy.adapters.source_files import MemorySourceStore
from hershy.adapters.sqlite_store import SqliteEventLog
from hershy.domain.errors import InvalidArgument, QuotaExceeded
from hershy.domain.model import Program, Resources, State
from hershy.domain.quotas import (
    UNLIMITED,
    Usage,
    UserQuota,
    check_create,
    check_start,
    usage_of,
    validate_quota,
)
from hershy.domain.validation import ResourcePolicy, resolve_resources
from hershy.entrypoints import convert
from hershy.entrypoints.cli_commands.quotas import ByteSize, Count, Cpus
from hershy.entrypoints.rest.errors import ApiError
from hershy.entrypoints.rest.quotas import limits_from_json
from hershy.service.quotas import Quotas
from hershy.service.registry import Registry
from hershy.v1 import quota_pb2
from tests.unit.test_supervisor import FAST, SequentialIds, TestClock

MiB = 1024**2
GiB = 1024**3


def program(state: State, user: str = "alice", **resources: int) -> Program:
    return Program(
        id=f"prog-{state.name.lower()}-{user}",
        user_id=user,
        build_id="b-1",
        proxy_target="127.0.0.1:19001",
        created_at=0.0,
        updated_at=0.0,
        resources=Resources(**{"memory_bytes": 512 * MiB, "milli_cpus": 1000, **resources}),
        state=state,
    )


# --- what counts ---------------------------------------------------------------------------


def test_memory_and_cpu_count_what_runs_or_may_run_programs_and_disk_count_everything() -> None:
    programs = [program(state) for state in State] + [program(State.READY, "bob")]
    usage = usage_of("alice", programs)
    active = {State.BUILDING, State.STARTING, State.READY, State.STOPPING, State.BACKOFF}
    assert usage.programs == len(State) - 1  # DELETED does not count
    assert usage.memory_bytes == len(active) * 512 * MiB
    assert usage.milli_cpus == len(active) * 1000
    assert usage.state_bytes == (len(State) - 1) * GiB
    assert usage_of("carol", programs) == Usage()


# --- Create ------------------------------------------------------------------------------------


def test_create_is_refused_naming_the_quota_the_limit_and_the_use() -> None:
    resources = Resources()
    check_create("alice", UNLIMITED, Usage(10**6, 10**15, 10**9, 10**15), resources)
    with pytest.raises(QuotaExceeded) as refused:
        check_create("alice", UserQuota(programs=2), Usage(programs=2), resources)
    assert (refused.value.quota, refused.value.limit, refused.value.usage) == ("programs", 2, 2)
    assert "quota programs exceeded: alice has 2 programs, at most 2" in refused.value.message
    check_create("alice", UserQuota(programs=3), Usage(programs=2), resources)

    with pytest.raises(QuotaExceeded) as refused:
        check_create("alice", UserQuota(state_bytes=2 * GiB), Usage(state_bytes=GiB + 1), resources)
    assert refused.value.quota == "state_bytes"
    assert "2 GiB" in refused.value.message
    assert "1 GiB" in refused.value.message
    check_create("alice", UserQuota(state_bytes=2 * GiB), Usage(state_bytes=GiB), resources)

    # Memory and CPU: only a program that could never start (running ones do not count yet).
    busy = Usage(memory_bytes=10 * GiB, milli_cpus=10_000)
    check_create("alice", UserQuota(memory_bytes=GiB, milli_cpus=1000), busy, resources)
    with pytest.raises(QuotaExceeded, match=r"quota memory_bytes exceeded.*512 MiB.*256 MiB"):
        check_create("alice", UserQuota(memory_bytes=256 * MiB), Usage(), resources)
    with pytest.raises(QuotaExceeded, match=r"quota milli_cpus exceeded.*1 CPU.*0\.5 CPU"):
        check_create("alice", UserQuota(milli_cpus=500), Usage(), resources)
    with pytest.raises(QuotaExceeded, match="quota programs"):
        check_create("alice", UserQuota(programs=0), Usage(), resources)


# --- Start -------------------------------------------------------------------------------------


def test_start_adds_the_program_to_what_runs() -> None:
    quota = UserQuota(memory_bytes=GiB, milli_cpus=1500)
    stopped = program(State.STOPPED)
    check_start("alice", quota, Usage(memory_bytes=512 * MiB, milli_cpus=500), stopped)
    with pytest.raises(QuotaExceeded) as refused:
        check_start("alice", quota, Usage(memory_bytes=GiB, milli_cpus=0), stopped)
    assert (refused.value.quota, refused.value.limit, refused.value.usage) == (
        "memory_bytes",
        GiB,
        GiB,
    )
    assert "programs that run or may run hold 1 GiB" in refused.value.message
    with pytest.raises(QuotaExceeded, match="milli_cpus"):
        check_start("alice", quota, Usage(milli_cpus=1000), stopped)
    # A program that already counts, or whose Start will be refused, adds nothing.
    for state in (State.READY, State.BACKOFF, State.DELETING, State.STARTING):
        check_start("alice", quota, Usage(memory_bytes=100 * GiB), program(state))
    for state in (State.CREATED, State.ERROR):
        with pytest.raises(QuotaExceeded):
            check_start("alice", quota, Usage(memory_bytes=GiB), program(state))


def test_a_lowered_disk_or_program_limit_refuses_starts() -> None:
    stopped = program(State.STOPPED)
    # Its own volume is in the use already: 2 GiB held, this one's 1 GiB among them.
    check_start("alice", UserQuota(state_bytes=2 * GiB), Usage(state_bytes=2 * GiB), stopped)
    with pytest.raises(QuotaExceeded, match="state_bytes"):
        check_start("alice", UserQuota(state_bytes=GiB), Usage(state_bytes=2 * GiB), stopped)
    check_start("alice", UserQuota(programs=2), Usage(programs=2), stopped)
    with pytest.raises(QuotaExceeded, match="quota programs exceeded: alice has 3"):
        check_start("alice", UserQuota(programs=2), Usage(programs=3), stopped)


def test_limits_are_not_negative() -> None:
    assert validate_quota(UserQuota(0, 0, 0, 0)) == UserQuota(0, 0, 0, 0)
    for name in ("programs", "memory_bytes", "milli_cpus", "state_bytes"):
        with pytest.raises(InvalidArgument, match=f"quota.max_{name}: must not be negative"):
            validate_quota(UserQuota(**{name: -1}))


def test_state_size_has_a_default_and_the_hosts_bounds() -> None:
    policy = ResourcePolicy()
    assert resolve_resources(0, 0, 0, policy).state_bytes == GiB
    assert resolve_resources(0, 0, 0, policy, state_bytes=64 * MiB).state_bytes == 64 * MiB
    assert resolve_resources(0, 0, 0, policy, state_bytes=16 * GiB).state_bytes == 16 * GiB
    for bad in (MiB, 16 * GiB + 1, 2**62):
        with pytest.raises(InvalidArgument, match=r"resources\.state_bytes: \d+ is outside"):
            resolve_resources(0, 0, 0, policy, state_bytes=bad)
    with pytest.raises(InvalidArgument, match=r"resources\.state_bytes: must not be negative"):
        resolve_resources(0, 0, 0, policy, state_bytes=-1)


# --- the API's shapes ------------------------------------------------------------------------


def test_update_mask_changes_only_the_limits_it_names() -> None:
    current = UserQuota(programs=5, memory_bytes=GiB, milli_cpus=2000, state_bytes=GiB)
    message = quota_pb2.UserQuota(max_programs=3)
    assert convert.quota_from_pb(message, ["max_programs"], current) == replace(current, programs=3)
    # In the mask but unset: no limit.
    assert convert.quota_from_pb(message, ["max_memory_bytes"], current) == replace(
        current, memory_bytes=None
    )
    # No mask: every limit as given.
    assert convert.quota_from_pb(message, [], current) == UserQuota(programs=3)
    with pytest.raises(InvalidArgument, match="update_mask: 'usage' is not a limit"):
        convert.quota_from_pb(message, ["usage"], current)
    answer = convert.quota_to_pb("alice", UserQuota(programs=0), Usage(programs=1))
    assert answer.name == "users/alice/quota"
    assert answer.HasField("max_programs")
    assert answer.max_programs == 0
    assert not answer.HasField("max_memory_bytes")
    assert FieldMask(paths=list(convert.QUOTA_FIELDS)).paths[0] == "max_programs"


@pytest.mark.parametrize(
    "name",
    ["", "users/alice", "alice/quota", "users//quota", "users/Alice/quota", "users/a/b/quota"],
)
def test_quota_names_are_checked(name: str) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        convert.user_id_from_quota_name(name)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"[]", "body"),
        (b"{", "body"),
        (b'{"pids": 1}', "pids"),
        (b'{"programs": "3"}', "programs"),
        (b'{"programs": true}', "programs"),
        (b'{"programs": -1}', "programs"),
        (b'{"memory_bytes": 9223372036854775808}', "memory_bytes"),
        (b'{"state_bytes": 1.5}', "state_bytes"),
    ],
)
def test_rest_limits_refuse_malformed_bodies(body: bytes, field: str) -> None:
    with pytest.raises(ApiError) as refused:
        limits_from_json(body)
    assert refused.value.status == 400
    assert refused.value.extra["field"] == field


def test_rest_limits_left_out_or_null_mean_no_limit() -> None:
    assert limits_from_json(b'{"programs": 2, "memory_bytes": null}') == {
        "programs": 2,
        "memory_bytes": None,
        "milli_cpus": None,
        "state_bytes": None,
    }


def test_cli_sizes_cpus_and_counts() -> None:
    size, cpus, count = ByteSize(unlimited=True), Cpus(unlimited=True), Count()
    assert size.convert("2GiB", None, None) == 2 * GiB
    assert size.convert("512MiB", None, None) == 512 * MiB
    assert size.convert("1.5G", None, None) == 3 * GiB // 2
    assert size.convert("1GB", None, None) == 10**9
    assert size.convert("4096", None, None) == 4096
    assert size.convert("unlimited", None, None) == -1
    assert cpus.convert("0.5", None, None) == 500
    assert cpus.convert("2", None, None) == 2000
    assert count.convert("3", None, None) == 3
    assert count.convert("none", None, None) == -1
    for parser, bad in ((size, "2 parsecs"), (size, "-1G"), (cpus, "many"), (count, "-2")):
        with pytest.raises(click.BadParameter):
            parser.convert(bad, None, None)
    with pytest.raises(click.BadParameter):
        ByteSize().convert("unlimited", None, None)  # deploy's sizes have no "unlimited"


# --- the service and the store -------------------------------------------------------------


def registry(quotas: Quotas) -> Registry:
    sources = MemorySourceStore()
    logs = FileLogStore(Path(tempfile.mkdtemp(prefix="hershy-logs-")))
    return Registry(
        handler=FakeEffectHandler(sources, logs),
        sources=sources,
        logs=logs,
        event_log=MemoryEventLog(),
        clock=TestClock(),
        timers=TestClock(),
        ids=SequentialIds(),
        policy=FAST,
        quotas=quotas,
    )


async def test_concurrent_creates_and_starts_never_pass_a_limit_together() -> None:
    quotas = Quotas()
    await quotas.set("alice", UserQuota(programs=3, memory_bytes=GiB))
    async with registry(quotas) as hosts:
        results = await asyncio.gather(
            *(hosts.create("alice", "FROM scratch\n", {}) for _ in range(8)),
            return_exceptions=True,
        )
        made = [r for r in results if isinstance(r, Program)]
        refused = [r for r in results if isinstance(r, QuotaExceeded)]
        assert (len(made), len(refused)) == (3, 5), results
        # Three programs of 512 MiB, 1 GiB for all that run: two starts of three pass.
        starts = await asyncio.gather(*(hosts.start(p.id) for p in made), return_exceptions=True)
        assert sum(isinstance(s, QuotaExceeded) for s in starts) == 1, starts
        assert hosts.usage("alice").memory_bytes == GiB
        # Another user is not limited by alice's quota.
        for _ in range(5):
            other = await hosts.create("bob", "FROM scratch\n", {})
            await hosts.start(other.id)
        assert hosts.usage("bob").programs == 5


async def test_quotas_are_kept_in_the_store_and_old_stores_open(tmp_path: Path) -> None:
    store = SqliteEventLog(tmp_path)
    store.open()
    quotas = Quotas(store)
    assert quotas.get("alice") == UNLIMITED
    await quotas.set("alice", UserQuota(programs=2, state_bytes=GiB))
    await quotas.set("bob", UserQuota(milli_cpus=0))
    await quotas.set("alice", UserQuota(programs=4))
    store.close()

    reopened = SqliteEventLog(tmp_path)
    reopened.open()
    assert Quotas(reopened).get("alice") == UserQuota(programs=4)
    assert Quotas(reopened).get("bob") == UserQuota(milli_cpus=0)
    reopened.close()

    # A store from before quotas has no table: it is made in place, nothing else changes.
    with sqlite3.connect(tmp_path / "hershy.db") as db:
        db.execute("DROP TABLE user_quotas")
    old = SqliteEventLog(tmp_path)
    old.open()
    assert old.quotas() == {}
    await Quotas(old).set("carol", UserQuota(programs=1))
    assert old.quotas() == {"carol": UserQuota(programs=1)}
    old.close()


async def test_bad_limits_are_not_stored() -> None:
    quotas = Quotas()
    with pytest.raises(InvalidArgument, match=r"quota\.max_programs"):
        await quotas.set("alice", UserQuota(programs=-3))
    with pytest.raises(InvalidArgument, match="user_id"):
        await quotas.set("Not A User", UserQuota())
    assert quotas.get("alice") == UNLIMITED
