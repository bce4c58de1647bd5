"""Per-user quotas on the real `hershy serve --runtime fake`, with tokens on.

Through the Python client (gRPC), the REST shim and the CLI: each quota
exceeded at Create and at Start is RESOURCE_EXHAUSTED / HTTP 429 naming the
quota, its limit and the use; another user is unaffected; only the admin sets
quotas; a user reads their own and no one else's; `whoami` shows them; they
survive a Host restart.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hershy_client import Client, PermissionDenied, ResourceExhausted, pb
from tests.e2e.test_cli import (
    AUTH,
    FAILED,
    USAGE,
    CliHost,
    cli,
    new_token,
    one_line_error,
    running_host,
)

MiB = 1024**2
GiB = 1024**3
DOCKERFILE = "FROM scratch\n"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliHost]:
    with running_host(tmp_path_factory.mktemp("hershy-quotas")) as running:
        yield running


def client(host: CliHost, token: str) -> Client:
    return Client(host.target, token=token, timeout=10)


def rest(
    host: CliHost, token: str, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{host.http}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def refused(error: ResourceExhausted, quota: str, limit: int, usage: int) -> None:
    """The error names the quota, its limit and the use, in ErrorInfo and in the message."""
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "QUOTA_EXCEEDED"
    assert error.metadata == {"quota": quota, "limit": str(limit), "usage": str(usage)}
    assert f"quota {quota} exceeded" in error.message


def test_the_default_is_no_limit_and_a_user_reads_only_their_own(host: CliHost) -> None:
    alice = new_token(host, "dana")
    with client(host, alice) as dana:
        quota = dana.get_user_quota("dana")
        assert quota.name == "users/dana/quota"
        for field in ("max_programs", "max_memory_bytes", "max_milli_cpus", "max_state_bytes"):
            assert not quota.HasField(field)
        assert quota.usage.programs == 0
        with pytest.raises(PermissionDenied):
            dana.get_user_quota("erin")
        with pytest.raises(PermissionDenied, match="only the admin"):
            dana.update_user_quota("dana", max_programs=100)
        with pytest.raises(PermissionDenied, match="only the admin"):
            dana.update_user_quota("erin", max_programs=0)
    status, body = rest(host, alice, "PUT", "/users/dana/quota", {"programs": 100})
    assert (status, body["error"]) == (403, "PERMISSION_DENIED")
    status, body = rest(host, alice, "GET", "/users/erin/quota")
    assert status == 403
    status, body = rest(host, alice, "GET", "/users/dana/quota")
    assert status == 200
    assert body["limits"] == dict.fromkeys(
        ("programs", "memory_bytes", "milli_cpus", "state_bytes")
    )
    # Nothing changed for the refused calls.
    with client(host, host.admin_token) as admin:
        assert not admin.get_user_quota("erin").HasField("max_programs")
        assert not admin.get_user_quota("dana").HasField("max_programs")


def test_the_programs_quota_at_create_and_start(host: CliHost) -> None:
    alice, bob = new_token(host, "alice"), new_token(host, "bob")
    with client(host, host.admin_token) as admin, client(host, alice) as user:
        admin.update_user_quota("alice", max_programs=2)
        first = user.create("alice", DOCKERFILE)
        second = user.create("alice", DOCKERFILE)
        with pytest.raises(ResourceExhausted) as error:
            user.create("alice", DOCKERFILE)
        refused(error.value, "programs", 2, 2)
        assert "alice has 2 programs, at most 2" in error.value.message

        status, body = rest(host, alice, "POST", "/programs", {"dockerfile": DOCKERFILE})
        assert status == 429, body
        assert body["error"] == "QUOTA_EXCEEDED"
        assert (body["quota"], body["limit"], body["usage"]) == ("programs", 2, 2)
        assert "quota programs exceeded" in body["message"]

        # Another user is not touched by alice's quota.
        with client(host, bob) as other:
            for _ in range(3):
                other.create("bob", DOCKERFILE)

        # The admin lowers it under what alice holds: her starts are refused, nothing stops.
        admin.update_user_quota("alice", max_programs=1)
        with pytest.raises(ResourceExhausted) as error:
            user.start(first)
        refused(error.value, "programs", 1, 2)
        assert user.get(first).state == pb.STATE_CREATED
        # One deleted: room again.
        user.delete(first)
        deadline = time.monotonic() + 10
        while user.get_user_quota("alice").usage.programs != 1:
            assert time.monotonic() < deadline, "the deleted program still counts"
            time.sleep(0.05)
        user.start(second)
        admin.update_user_quota("alice", max_programs=None)
        assert not admin.get_user_quota("alice").HasField("max_programs")


def test_memory_and_cpu_count_what_runs(host: CliHost) -> None:
    carol = new_token(host, "carol")
    with client(host, host.admin_token) as admin, client(host, carol) as user:
        admin.update_user_quota("carol", max_memory_bytes=GiB, max_milli_cpus=1500)
        # Alone over the limit: refused at Create.
        with pytest.raises(ResourceExhausted) as error:
            user.create("carol", DOCKERFILE, resources={"memory_bytes": 2 * GiB})
        refused(error.value, "memory_bytes", GiB, 0)
        with pytest.raises(ResourceExhausted) as error:
            user.create("carol", DOCKERFILE, resources={"milli_cpus": 2000})
        refused(error.value, "milli_cpus", 1500, 0)

        half = {"memory_bytes": 512 * MiB, "milli_cpus": 500}
        programs = [user.create("carol", DOCKERFILE, resources=half) for _ in range(4)]
        # Created programs hold no memory or CPU.
        assert user.get_user_quota("carol").usage.memory_bytes == 0
        for program in programs[:2]:
            user.start(program)
            user.wait(program, "READY", timeout=10)
        usage = user.get_user_quota("carol").usage
        assert (usage.memory_bytes, usage.milli_cpus, usage.programs) == (GiB, 1000, 4)
        with pytest.raises(ResourceExhausted) as error:
            user.start(programs[2])
        refused(error.value, "memory_bytes", GiB, GiB)
        assert "programs that run or may run hold 1 GiB" in error.value.message
        status, body = rest(host, carol, "POST", f"/programs/{programs[2].id}/start")
        assert (status, body["quota"], body["usage"]) == (429, "memory_bytes", GiB)
        status, body = rest(host, carol, "POST", f"/programs/{programs[2].id}/restart")
        assert (status, body["quota"]) == (429, "memory_bytes")
        # A program that runs already is not counted twice.
        user.restart(programs[0])
        user.wait(programs[0], "READY", timeout=10)

        # CPU: memory lifted, 1.5 CPUs for three programs of half a CPU each.
        admin.update_user_quota("carol", max_memory_bytes=None)
        user.start(programs[2])
        user.wait(programs[2], "READY", timeout=10)
        with pytest.raises(ResourceExhausted) as error:
            user.start(programs[3])
        refused(error.value, "milli_cpus", 1500, 1500)

        # A stopped program frees its share.
        user.stop(programs[0])
        user.wait(programs[0], "STOPPED", timeout=10)
        user.start(programs[3])
        user.wait(programs[3], "READY", timeout=10)
        with pytest.raises(ResourceExhausted):
            user.start(programs[0])


def test_the_state_disk_quota_at_create_and_start(host: CliHost) -> None:
    frank = new_token(host, "frank")
    with client(host, host.admin_token) as admin, client(host, frank) as user:
        admin.update_user_quota("frank", max_state_bytes=GiB)
        big = user.create("frank", DOCKERFILE, resources={"state_bytes": 768 * MiB})
        with pytest.raises(ResourceExhausted) as error:
            user.create("frank", DOCKERFILE, resources={"state_bytes": 512 * MiB})
        refused(error.value, "state_bytes", GiB, 768 * MiB)
        assert "768 MiB" in error.value.message
        user.create("frank", DOCKERFILE, resources={"state_bytes": 256 * MiB})
        # Lowered below what frank's volumes take: starts are refused.
        admin.update_user_quota("frank", max_state_bytes=512 * MiB)
        with pytest.raises(ResourceExhausted) as error:
            user.start(big)
        refused(error.value, "state_bytes", 512 * MiB, 256 * MiB)
        assert user.get_user_quota("frank").usage.state_bytes == GiB


def test_the_cli_sets_and_shows_quotas(host: CliHost) -> None:
    gina = new_token(host, "gina")
    run = cli(
        host,
        host.admin_token,
        "quota",
        "set",
        "gina",
        "--programs",
        "3",
        "--memory",
        "2GiB",
        "--cpus",
        "2",
        "--state",
        "1GiB",
    )
    assert "programs  0 of 3" in run.stdout, run
    got = cli(host, gina, "quota", "get", "gina", "--json").json()
    assert got["max_programs"] == "3"  # int64 as a string, as MessageToDict writes it
    assert got["max_memory_bytes"] == str(2 * GiB)
    assert got["max_milli_cpus"] == "2000"
    assert got["max_state_bytes"] == str(GiB)

    # Only the given limits change; `unlimited` removes one.
    cli(host, host.admin_token, "quota", "set", "gina", "--memory", "unlimited")
    got = cli(host, host.admin_token, "quota", "get", "gina", "--json").json()
    assert "max_memory_bytes" not in got
    assert got["max_programs"] == "3"

    who = cli(host, gina, "whoami").stdout
    assert who.startswith("gina (token tok-"), who
    assert "programs  0 of 3" in who
    assert "memory    0 bytes of unlimited" in who
    assert "cpus      0 of 2" in who
    assert "state     0 bytes of 1 GiB" in who

    # A user cannot set their own (exit 5), nor read another's; nothing to set is a usage error.
    denied = cli(host, gina, "quota", "set", "gina", "--programs", "100", expect=AUTH)
    assert "only the admin" in one_line_error(denied)
    cli(host, gina, "quota", "get", "alice", expect=AUTH)
    cli(host, host.admin_token, "quota", "set", "gina", expect=USAGE)
    cli(host, host.admin_token, "quota", "set", "gina", "--memory", "lots", expect=USAGE)
    assert (
        cli(host, host.admin_token, "quota", "get", "gina", "--json").json()["max_programs"] == "3"
    )


def test_quotas_survive_a_host_restart(tmp_path: Path) -> None:
    with running_host(tmp_path) as first:
        addresses = (first.target, first.http_address)
        with client(first, first.admin_token) as admin:
            admin.update_user_quota("hugo", max_programs=1, max_state_bytes=GiB)
    with running_host(tmp_path, *addresses) as again, client(again, again.admin_token) as admin:
        quota = admin.get_user_quota("hugo")
        assert (quota.max_programs, quota.max_state_bytes) == (1, GiB)
        assert not quota.HasField("max_memory_bytes")
        admin.create("hugo", DOCKERFILE)
        with pytest.raises(ResourceExhausted):
            admin.create("hugo", DOCKERFILE)


def test_deploy_sets_resources_and_a_quota_stops_it(host: CliHost, tmp_path: Path) -> None:
    ivan = new_token(host, "ivan")
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    run = cli(
        host,
        ivan,
        "deploy",
        str(tmp_path),
        "--memory",
        "256MiB",
        "--cpus",
        "0.5",
        "--state",
        "64MiB",
        "--no-wait",
        "--json",
    )
    resources = run.json()["resources"]
    assert resources["memory_bytes"] == str(256 * MiB)
    assert resources["milli_cpus"] == "500"
    assert resources["state_bytes"] == str(64 * MiB)
    cli(host, host.admin_token, "quota", "set", "ivan", "--state", "100MiB")
    over = cli(host, ivan, "deploy", str(tmp_path), "--state", "64MiB", expect=FAILED)
    assert "quota state_bytes exceeded" in one_line_error(over)
    cli(host, ivan, "deploy", str(tmp_path), "--state", "1 parsec", expect=USAGE)
