"""`hershy doctor`: its checks fed broken inputs, then the real command on this machine.

The check functions are pure (they judge a daemon info dict, a bind error, a
folder's facts), so most tests hand them what a broken host would show. The
last tests run the installed `hershy doctor` against the real daemon.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hershy.adapters.docker.compose import PORT_RANGE
from hershy.entrypoints import doctor
from hershy.entrypoints.doctor import Check, DataDirFacts, Level

#: What `docker info` says on a host set up by scripts/setup-host.sh (netstack mode).
GOOD_INFO: dict[str, Any] = {
    "ServerVersion": "20.10.24+dfsg1",
    "Driver": "overlay2",
    "DefaultRuntime": "runsc",
    "LiveRestoreEnabled": True,
    "DockerRootDir": "/var/lib/docker",
    "Runtimes": {
        "runc": {"path": "runc"},
        "runsc": {"path": "/usr/local/lib/hershy/bin/runsc", "runtimeArgs": ["--overlay2=none"]},
    },
}
GOOD_VERSION: dict[str, Any] = {"Version": "20.10.24+dfsg1", "ApiVersion": "1.41"}


def info_with(**changes: Any) -> dict[str, Any]:
    return {**GOOD_INFO, **changes}


def assert_level(check: Check, level: Level) -> None:
    assert check.level is level, check.lines()
    # Anything not OK must say how to fix it; an OK has nothing to fix.
    assert bool(check.fix) is (level is not Level.OK), check.lines()


# --- the daemon --------------------------------------------------------------------------------


def test_daemon_reachable_and_new_enough_is_ok() -> None:
    check = doctor.check_daemon(GOOD_INFO, GOOD_VERSION, None)
    assert_level(check, Level.OK)
    assert "20.10.24" in check.detail


def test_unreachable_daemon_fails_saying_how_to_start_it() -> None:
    check = doctor.check_daemon(None, None, "Connection refused")
    assert_level(check, Level.FAIL)
    assert "Connection refused" in check.detail
    assert check.fix is not None
    assert "setup-host.sh" in check.fix


def test_daemon_older_than_the_api_hershy_speaks_fails() -> None:
    check = doctor.check_daemon(GOOD_INFO, {"ApiVersion": "1.40"}, None)
    assert_level(check, Level.FAIL)
    assert "too old" in check.detail


def test_runsc_registered_reports_path_and_version() -> None:
    check = doctor.check_runsc(GOOD_INFO, "runsc version v1")
    assert_level(check, Level.OK)
    assert check.detail == "/usr/local/lib/hershy/bin/runsc: runsc version v1"


def test_daemon_without_runsc_fails_naming_what_it_has() -> None:
    info = info_with(Runtimes={"runc": {"path": "runc"}})
    check = doctor.check_runsc(info, None)
    assert_level(check, Level.FAIL)
    assert "no runtime runsc (it has runc)" in check.detail
    # The checks that need runsc's entry do not pass silently either.
    assert_level(doctor.check_network_mode(info), Level.FAIL)


def test_runsc_registered_but_not_runnable_fails() -> None:
    check = doctor.check_runsc(GOOD_INFO, None)
    assert_level(check, Level.FAIL)
    assert "does not run" in check.detail


def test_runsc_version_runs_the_binary_and_refuses_a_missing_one(tmp_path: Path) -> None:
    assert doctor.runsc_version(str(tmp_path / "no-such-runsc")) is None
    fake = tmp_path / "runsc"
    fake.write_text("#!/bin/sh\necho 'runsc version test-1'\necho 'spec: 1.2.1'\n")
    fake.chmod(0o755)
    assert doctor.runsc_version(str(fake)) == "runsc version test-1"


def test_network_mode_netstack_is_ok() -> None:
    check = doctor.check_network_mode(GOOD_INFO)
    assert_level(check, Level.OK)
    assert check.detail.startswith("netstack")


def test_network_mode_host_is_a_warning() -> None:
    runtimes = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}}
    check = doctor.check_network_mode(info_with(Runtimes=runtimes))
    assert_level(check, Level.WARN)
    assert check.detail == "host (weaker: gVisor uses the host kernel's network stack)"
    assert check.fix is not None
    assert "HERSHY_RUNSC_NETWORK=netstack" in check.fix


def test_network_mode_none_fails_as_nothing_would_become_ready() -> None:
    runtimes = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}
    assert_level(doctor.check_network_mode(info_with(Runtimes=runtimes)), Level.FAIL)


def test_default_runtime_runc_fails() -> None:
    check = doctor.check_default_runtime(info_with(DefaultRuntime="runc"))
    assert_level(check, Level.FAIL)
    assert "outside gVisor" in check.detail
    assert check.fix is not None
    assert '"default-runtime": "runsc"' in check.fix
    assert_level(doctor.check_default_runtime(GOOD_INFO), Level.OK)


def test_live_restore_off_is_a_warning() -> None:
    assert_level(doctor.check_live_restore(info_with(LiveRestoreEnabled=False)), Level.WARN)
    assert_level(doctor.check_live_restore(GOOD_INFO), Level.OK)


def test_insecure_runtime_is_a_warning_and_a_missing_one_fails() -> None:
    assert_level(doctor.check_insecure_runtime(GOOD_INFO, "runc"), Level.WARN)
    assert_level(doctor.check_insecure_runtime(info_with(Runtimes={}), "runc"), Level.FAIL)


def test_smoke_test_judges_the_sandbox_by_its_dmesg() -> None:
    gvisor = "4.19.0-gvisor\n[    0.000000] Starting gVisor...\n"
    assert_level(doctor.check_smoke(True, gvisor, None), Level.OK)
    host_kernel = "6.1.0-18-amd64\ndmesg: klogctl: Operation not permitted\n"
    failed = doctor.check_smoke(True, host_kernel, None)
    assert_level(failed, Level.FAIL)
    assert "uname -r 6.1.0-18-amd64" in failed.detail
    assert_level(doctor.check_smoke(True, None, "OCI runtime create failed"), Level.FAIL)
    assert_level(doctor.check_smoke(False, None, None), Level.WARN)


# --- addresses and ports -------------------------------------------------------------------------


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on, in the WatcherAPI range (as a program's would be)."""
    for port in PORT_RANGE:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen()
        try:
            yield port
        finally:
            sock.close()
        return
    pytest.fail("no free port in the WatcherAPI range to listen on")


def test_address_in_use_is_a_warning_naming_a_running_host(listening: int) -> None:
    address = f"127.0.0.1:{listening}"
    error = doctor.bind_error(address)
    assert error is not None
    assert error.errno == errno.EADDRINUSE
    check = doctor.check_address("gRPC address", address, "--grpc-addr", error)
    assert_level(check, Level.WARN)
    assert check.detail == f"{address} in use — is a Host already running?"
    assert check.fix is not None
    assert "--grpc-addr" in check.fix


def test_free_address_is_ok() -> None:
    assert doctor.bind_error("127.0.0.1:0") is None
    assert_level(doctor.check_address("HTTP address", "127.0.0.1:0", "--http-addr", None), Level.OK)


def test_an_address_not_of_this_machine_fails() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never assigned to a real interface.
    error = doctor.bind_error("192.0.2.1:9090")
    assert error is not None
    assert_level(
        doctor.check_address("gRPC address", "192.0.2.1:9090", "--grpc-addr", error), Level.FAIL
    )


def test_both_apis_on_one_address_fail() -> None:
    same = doctor.check_same_addresses("127.0.0.1:9090", "127.0.0.1:9090")
    assert same is not None
    assert_level(same, Level.FAIL)
    assert doctor.check_same_addresses("127.0.0.1:0", "127.0.0.1:0") is None
    assert doctor.check_same_addresses("127.0.0.1:9090", "127.0.0.1:9000") is None


def test_taken_watcher_ports_are_found_and_warned_about(listening: int) -> None:
    taken = doctor.taken_ports([listening, *PORT_RANGE[-3:]])
    assert listening in taken
    check = doctor.check_port_range([listening], len(PORT_RANGE))
    assert_level(check, Level.WARN)
    assert f"{len(PORT_RANGE) - 1} of {len(PORT_RANGE)}" in check.detail
    assert str(listening) in check.detail


def test_port_range_all_free_is_ok_and_none_free_fails() -> None:
    assert_level(doctor.check_port_range([], len(PORT_RANGE)), Level.OK)
    assert_level(doctor.check_port_range(list(PORT_RANGE), len(PORT_RANGE)), Level.FAIL)


# --- the data dir and the disk -------------------------------------------------------------------


def test_data_dir_readable_by_others_is_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    facts = doctor.inspect_data_dir(data)
    assert_level(doctor.check_data_dir(facts), Level.OK)
    permissions = doctor.check_data_dir_permissions(facts)
    assert permissions is not None
    assert_level(permissions, Level.WARN)
    assert permissions.detail.startswith("mode 0755")
    assert permissions.fix is not None
    assert f"chmod 700 {data}" in permissions.fix


def test_data_dir_readable_by_its_group_only_is_a_warning_too(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o750)
    permissions = doctor.check_data_dir_permissions(doctor.inspect_data_dir(data))
    assert permissions is not None
    assert_level(permissions, Level.WARN)
    assert permissions.detail.startswith("mode 0750")


def test_owner_only_data_dir_is_ok(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    data.chmod(0o700)
    permissions = doctor.check_data_dir_permissions(doctor.inspect_data_dir(data))
    assert permissions is not None
    assert_level(permissions, Level.OK)


def test_missing_data_dir_under_a_writable_folder_is_ok_and_not_created(tmp_path: Path) -> None:
    data = tmp_path / "a" / "b"
    facts = doctor.inspect_data_dir(data)
    assert facts.kind == "missing"
    assert facts.base == tmp_path
    assert_level(doctor.check_data_dir(facts), Level.OK)
    assert not (tmp_path / "a").exists(), "the doctor must not create the data dir"
    assert list(tmp_path.iterdir()) == [], "its write probe must be removed"


def test_data_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    check = doctor.check_data_dir(doctor.inspect_data_dir(file))
    assert_level(check, Level.FAIL)
    assert "is a file, not a folder" in check.detail
    assert doctor.check_data_dir_permissions(doctor.inspect_data_dir(file)) is None


def test_data_dir_under_a_file_fails(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    check = doctor.check_data_dir(doctor.inspect_data_dir(file / "data"))
    assert_level(check, Level.FAIL)
    assert f"{file} is a file" in check.detail


def test_unwritable_data_dir_fails() -> None:
    # What inspect_data_dir finds on a read-only mount (root passes mode bits, so fed here).
    facts = DataDirFacts(
        path=Path("/ro/data"),
        kind="dir",
        mode=0o700,
        base=Path("/ro/data"),
        base_is_dir=True,
        write_problem="Read-only file system",
    )
    check = doctor.check_data_dir(facts)
    assert_level(check, Level.FAIL)
    assert check.detail == "/ro/data cannot be written: Read-only file system"


def test_low_disk_space_is_a_warning(tmp_path: Path) -> None:
    assert_level(doctor.check_disk(["/var/lib/hershy"], 1024**3), Level.WARN)
    assert_level(doctor.check_disk(["/var/lib/hershy"], 3 * 1024**3), Level.OK)
    # Two folders on one file system: one line naming both.
    (check,) = doctor.disk_checks([tmp_path / "x", tmp_path / "y"])
    assert f"{tmp_path / 'x'} and {tmp_path / 'y'}" in check.detail


# --- output --------------------------------------------------------------------------------------


def test_text_has_one_line_per_check_and_a_fix_line_for_each_problem() -> None:
    checks = [
        doctor.ok("a", "fine"),
        doctor.warn("b", "meh", "do b"),
        doctor.fail("c", "broken", "do c"),
    ]
    assert doctor.render_text(checks).splitlines() == [
        "OK a: fine",
        "WARN b: meh",
        "  fix: do b",
        "FAIL c: broken",
        "  fix: do c",
        "doctor: 1 OK, 1 WARN, 1 FAIL",
    ]
    assert json.loads(doctor.render_json(checks))[2] == {
        "check": "c",
        "level": "FAIL",
        "detail": "broken",
        "fix": "do c",
    }


def test_exit_code_is_1_only_with_a_failure() -> None:
    assert doctor.exit_code([doctor.ok("a", "x"), doctor.warn("b", "y", "z")]) == 0
    assert doctor.exit_code([doctor.ok("a", "x"), doctor.fail("b", "y", "z")]) == 1


# --- the real command -------------------------------------------------------------------------


def free_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# --- /state quotas ---------------------------------------------------------------------------


def test_state_quotas_that_cannot_be_enforced_fail_saying_what_is_needed(tmp_path: Path) -> None:
    check = doctor.check_state_quota(tmp_path, "mount -t failed: permission denied")
    assert_level(check, Level.FAIL)
    assert "permission denied" in check.detail
    assert check.fix is not None
    assert "loop" in check.fix
    assert "mkfs.ext4" in check.fix


def test_state_quotas_are_tried_for_real_and_leave_nothing(tmp_path: Path) -> None:
    check = doctor.state_quota_check(tmp_path)
    assert_level(check, Level.OK)
    assert "ENOSPC" in check.detail
    assert list(tmp_path.iterdir()) == []
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        assert str(tmp_path) not in mounts.read()
    # A data dir that does not exist yet: tried in the temp folder instead.
    missing = tmp_path / "not-yet"
    check = doctor.state_quota_check(missing)
    assert_level(check, Level.OK)
    assert str(missing) not in check.detail
    assert not missing.exists()


def run_doctor(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("hershy")
    if script is None:
        pytest.fail("the `hershy` console script is not on PATH: pip install -e .")
    return subprocess.run(
        [script, "doctor", "--grpc-addr", free_address(), "--http-addr", free_address(), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def lines_by_check(output: str) -> dict[str, str]:
    """`check name` -> its whole line, for the lines that start with a level."""
    found = {}
    for line in output.splitlines():
        level, _, rest = line.partition(" ")
        if level in {"OK", "WARN", "FAIL"}:
            found[rest.split(":", 1)[0]] = line
    return found


@pytest.mark.docker
def test_doctor_on_this_host_passes(tmp_path: Path) -> None:
    result = run_doctor("--deep", "--data-dir", str(tmp_path / "data"))
    report = f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    lines = lines_by_check(result.stdout)
    for name in (
        "docker daemon",
        "runsc registered",
        "default runtime",
        "gVisor smoke test",
        "live restore",
        "gRPC address",
        "HTTP address",
        "data dir",
        "data dir permissions",
        "state quotas",
        "disk space",
    ):
        assert lines.get(name, "").startswith(f"OK {name}: "), report
    # The network mode is the host's choice (setup-host.sh falls back to host); either is valid.
    assert lines["runsc network mode"] in {
        "OK runsc network mode: netstack (gVisor's own network stack)",
        "WARN runsc network mode: host (weaker: gVisor uses the host kernel's network stack)",
    }, report
    # Other Hosts' programs (tests running meanwhile) may hold a few WatcherAPI ports.
    assert lines["WatcherAPI ports"].split(" ", 1)[0] in {"OK", "WARN"}, report
    assert not [line for line in result.stdout.splitlines() if line.startswith("FAIL ")], report


@pytest.mark.docker
def test_doctor_json_lists_every_check(tmp_path: Path) -> None:
    result = run_doctor("--json", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    checks = json.loads(result.stdout)
    assert {check["check"] for check in checks} >= {"docker daemon", "runsc registered", "data dir"}
    for check in checks:
        assert set(check) == {"check", "level", "detail", "fix"}
        assert (check["fix"] is None) is (check["level"] == "OK"), check


@pytest.mark.docker
def test_doctor_fails_on_a_data_dir_it_cannot_create(tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a folder\n")
    result = run_doctor("--data-dir", str(file / "data"))
    report = f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 1, report
    lines = result.stdout.splitlines()
    (index,) = [i for i, line in enumerate(lines) if line.startswith("FAIL data dir: ")]
    assert f"{file} is a file" in lines[index], report
    assert lines[index + 1].startswith("  fix: "), report
