"""`hershy doctor`: is this machine ready to run a Host, and if not, what to do about it.

Each check says OK, WARN or FAIL, what it found, and for anything not OK how
to fix it. The checks are split in two: pure functions that judge facts (the
daemon's info, a bind error, a folder's mode), which tests can feed broken
inputs, and small gatherers that collect those facts from the machine.

A FAIL is something `hershy serve` would refuse or programs would break on; a
WARN is something that works but is weaker or risky.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound

from hershy.adapters.docker import state_volumes
from hershy.adapters.docker.compose import PORT_RANGE, SECURE_RUNTIME
from hershy.adapters.docker.engine import API_VERSION, DEFAULT_SOCKET
from hershy.adapters.docker.fingerprint import (
    DaemonFingerprint,
    NetworkMode,
    OciRuntime,
    read_daemon,
)
from hershy.adapters.kubernetes.doctor import ClusterOptions, check_cluster

#: The image scripts/setup-host.sh builds; the smoke test needs no registry with it.
BASE_IMAGE = "hershy-busybox:latest"
LOW_DISK_BYTES = 2 * 1024**3
SETUP = "scripts/setup-host.sh"
DAEMON_JSON = "/etc/docker/daemon.json"
RELOAD = "kill -HUP $(pidof dockerd)"
#: Containers the doctor starts carry this label (and not Hershy's, so no Host reaps them).
DOCTOR_LABEL = "dev.hershy.doctor"


class Level(enum.Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    level: Level
    name: str
    detail: str
    #: How to fix it; set whenever the level is not OK.
    fix: str | None = None

    def lines(self) -> list[str]:
        text = [f"{self.level.value} {self.name}: {self.detail}"]
        if self.fix:
            text.append(f"  fix: {self.fix}")
        return text

    def as_json(self) -> dict[str, str | None]:
        return {
            "check": self.name,
            "level": self.level.value,
            "detail": self.detail,
            "fix": self.fix,
        }


def ok(name: str, detail: str) -> Check:
    return Check(Level.OK, name, detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(Level.WARN, name, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(Level.FAIL, name, detail, fix)


# --- the Docker daemon: pure judgements of `docker info` / `docker version` ---------------------


def check_daemon(
    info: dict[str, Any] | None, version: dict[str, Any] | None, problem: str | None
) -> Check:
    """Reachable, and new enough for the API version Hershy's streams speak."""
    name = "docker daemon"
    if info is None or version is None:
        return fail(
            name,
            f"cannot reach it at {DEFAULT_SOCKET}: {problem or 'no answer'}",
            f"start it with {SETUP} (as root); if it runs, check that {DEFAULT_SOCKET} is its "
            "socket and that you may use it (root, or the docker group)",
        )
    daemon = DaemonFingerprint.of(info, version)
    api = daemon.api_version or "0"
    detail = (
        f"Docker {daemon.server_version} (API {api}) at {DEFAULT_SOCKET}, "
        f"storage {daemon.storage_driver}"
    )
    if _version_tuple(api) < _version_tuple(API_VERSION):
        return fail(
            name,
            f"{detail}: too old, Hershy needs API {API_VERSION} (Docker 20.10) or newer",
            f"install a newer Docker engine ({SETUP} installs Debian's docker.io)",
        )
    return ok(name, detail)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def runsc_entry(info: dict[str, Any]) -> OciRuntime | None:
    return DaemonFingerprint.of(info).runtimes.get(SECURE_RUNTIME)


def check_runsc(info: dict[str, Any], runsc_version: str | None) -> Check:
    """runsc registered with the daemon, and its binary there to run.

    `runsc_version` is the first line of `<path> --version`, None if it could not be run.
    """
    name = "runsc registered"
    daemon = DaemonFingerprint.of(info)
    entry = daemon.runtimes.get(SECURE_RUNTIME)
    if entry is None:
        runtimes = ", ".join(sorted(info.get("Runtimes") or {})) or "none"
        return fail(
            name,
            f"the daemon has no runtime {SECURE_RUNTIME} (it has {runtimes})",
            f"{SETUP} registers it in {DAEMON_JSON} (runtimes.runsc) and reloads dockerd",
        )
    path = entry.path
    if runsc_version is None:
        return fail(
            name,
            f"registered as {path}, but `{path} --version` does not run",
            f"reinstall it with {SETUP}, or point runtimes.runsc.path in {DAEMON_JSON} "
            f"at a working runsc, then {RELOAD}",
        )
    return ok(name, f"{path}: {runsc_version}")


def check_network_mode(info: dict[str, Any]) -> Check:
    """gVisor's own network stack (netstack), or the host kernel's (weaker)."""
    name = "runsc network mode"
    entry = runsc_entry(info)
    if entry is None:
        return fail(name, "not checked: runsc is not registered", "fix `runsc registered` first")
    if entry.network is NetworkMode.HOST:
        return warn(
            name,
            "host (weaker: gVisor uses the host kernel's network stack)",
            f"HERSHY_RUNSC_NETWORK=netstack {SETUP} builds a current runsc that uses its own "
            "network stack (Debian's 2022 runsc cannot on new kernels)",
        )
    if entry.network is NetworkMode.NONE:
        # Then no published port reaches a program: none would ever become Ready.
        return fail(
            name,
            "none: programs' WatcherAPI ports cannot be reached, so none would become Ready",
            f"remove --network=none from runtimes.runsc.runtimeArgs in {DAEMON_JSON}, then "
            f"{RELOAD} (or run {SETUP})",
        )
    return ok(name, "netstack (gVisor's own network stack)")


def check_default_runtime(info: dict[str, Any]) -> Check:
    """The daemon's default runtime runs the RUN steps of every build."""
    name = "default runtime"
    default = DaemonFingerprint.of(info).default_runtime
    if default != SECURE_RUNTIME:
        return fail(
            name,
            f"{default!r}: the RUN steps of builds would run outside gVisor",
            f'set "default-runtime": "{SECURE_RUNTIME}" in {DAEMON_JSON}, then {RELOAD} '
            f"(or run {SETUP})",
        )
    return ok(name, f"{SECURE_RUNTIME} (builds' RUN steps run under gVisor too)")


def check_live_restore(info: dict[str, Any]) -> Check:
    name = "live restore"
    if not DaemonFingerprint.of(info).live_restore:
        return warn(
            name,
            "off: restarting or upgrading dockerd stops every program's container",
            f'set "live-restore": true in {DAEMON_JSON}, then {RELOAD} (or run {SETUP})',
        )
    return ok(name, "on (programs keep running while dockerd restarts)")


def check_insecure_runtime(info: dict[str, Any], runtime: str) -> Check:
    """With --runtime runc: the runtime must exist, and it is no sandbox."""
    name = f"runtime {runtime}"
    if runtime not in DaemonFingerprint.of(info).runtimes:
        return fail(
            name,
            f"the daemon has no runtime {runtime!r}",
            f"use --runtime {SECURE_RUNTIME} ({SETUP} registers it)",
        )
    return warn(
        name,
        "programs would run WITHOUT the gVisor sandbox (serve needs --allow-insecure-runtime)",
        f"use --runtime {SECURE_RUNTIME} for any program you do not trust",
    )


def check_smoke(image_present: bool, output: str | None, problem: str | None) -> Check:
    """Judges `uname -r; dmesg | head -n1` run in a container under runsc.

    gVisor's kernel greets with "Starting gVisor..." in dmesg; under runc the
    host kernel denies dmesg to an unprivileged container.
    """
    name = "gVisor smoke test"
    if not image_present:
        return warn(
            name,
            f"not run: the local image {BASE_IMAGE} is missing (nothing is pulled)",
            f"{SETUP} builds it (FROM scratch + static busybox)",
        )
    if output is None:
        return fail(
            name,
            f"a container under {SECURE_RUNTIME} did not run: {problem or 'no output'}",
            f"see the daemon's log (/var/log/dockerd.log); {SETUP} re-checks and repairs runsc",
        )
    lines = output.strip().splitlines() or ["?"]
    kernel = lines[0].strip()
    if "Starting gVisor" not in output:
        return fail(
            name,
            f"a container asked for {SECURE_RUNTIME} did not run under gVisor "
            f"(uname -r {kernel}; dmesg: {' '.join(lines[1:]) or 'nothing'})",
            f"check runtimes.runsc.path in {DAEMON_JSON} points at runsc, then {RELOAD}",
        )
    return ok(name, f"a container ran under gVisor (uname -r {kernel})")


# --- addresses, ports, the data dir, disk: pure judgements ------------------------------------


def check_address(name: str, address: str, option: str, error: OSError | None) -> Check:
    """`error` is what binding `address` raised (None: it bound)."""
    if error is None:
        return ok(name, f"{address} is free")
    if error.errno == errno.EADDRINUSE:
        port = address.rpartition(":")[2]
        return warn(
            name,
            f"{address} in use — is a Host already running?",
            f"stop whatever listens there (`ss -ltnp 'sport = :{port}'` names it), "
            f"or pass {option} with a free address",
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return fail(
            name,
            f"{address}: not an address of this machine",
            f"pass {option} with an address of this machine (e.g. 127.0.0.1:PORT)",
        )
    if error.errno == errno.EACCES:
        return fail(
            name,
            f"{address}: not allowed to bind it ({error.strerror})",
            f"run as root, or pass {option} with a port above 1023",
        )
    return fail(
        name,
        f"{address}: cannot bind it ({error.strerror or error})",
        f"pass {option} with a HOST:PORT this machine can listen on",
    )


def check_host_readiness(
    http_addr: str, status: int | None, body: str, problem: str | None
) -> Check:
    """What a running Host's `/readyz` answered (`status` None: nothing answered, `problem` why).

    A Host that is recovering after a restart (reconciling with Docker, or retrying
    a Docker error) answers 503 with the reason until it is done."""
    name = "running Host"
    url = f"http://{http_addr}/readyz"
    if status is None:
        return ok(name, f"none answers on {url} ({problem}): nothing to check")
    if status == 200:
        return ok(name, f"the Host on {url} is ready (recovered and reconciled)")
    try:
        answer = json.loads(body)
        reason, message = str(answer.get("error", "")), str(answer.get("message", body))
    except (ValueError, AttributeError):
        reason, message = "", body.strip()[:200]
    if status == 503 and reason == "RECOVERING":
        return warn(
            name,
            f"the Host on {url} is not ready: {message}",
            "it retries by itself; if a Docker error is named, fix the daemon (the Docker "
            f"checks above, {SETUP}) and it goes on; its log says more",
        )
    return warn(
        name,
        f"{url} answered {status}: {message or 'no body'}",
        "if it is a Host, see its log; if it is something else, give the Host another --http-addr",
    )


def host_readiness(http_addr: str, timeout: float = 3.0) -> tuple[int | None, str, str | None]:
    """(status, body, problem) of GET /readyz on `http_addr`; status None if none answered."""
    try:
        with urllib.request.urlopen(f"http://{http_addr}/readyz", timeout=timeout) as answer:
            return int(answer.status), answer.read(4096).decode("utf-8", "replace"), None
    except urllib.error.HTTPError as error:
        return int(error.code), error.read(4096).decode("utf-8", "replace"), None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return None, "", str(reason)


def check_same_addresses(grpc_addr: str, http_addr: str) -> Check | None:
    """Both APIs on one address cannot work (port 0 picks two different ports)."""
    if grpc_addr == http_addr and not grpc_addr.endswith(":0"):
        return fail(
            "addresses",
            f"the gRPC and HTTP APIs would both listen on {grpc_addr}",
            "pass different --grpc-addr and --http-addr",
        )
    return None


@dataclass(frozen=True, slots=True)
class DataDirFacts:
    path: Path
    #: "dir", "missing", or what else is there ("file", "other").
    kind: str
    #: The permission bits, when `path` is a folder.
    mode: int | None
    #: Where a file was tried: `path` itself, or its nearest existing ancestor when missing.
    base: Path
    base_is_dir: bool
    #: Why a file could not be created in `base`; None if it could.
    write_problem: str | None


def check_data_dir(facts: DataDirFacts) -> Check:
    name = "data dir"
    elsewhere = "or pass --data-dir with a folder you can write to"
    if facts.kind not in ("dir", "missing"):
        return fail(
            name,
            f"{facts.path} is a {facts.kind}, not a folder",
            f"remove or move {facts.path}, {elsewhere}",
        )
    if not facts.base_is_dir:
        return fail(
            name,
            f"{facts.path} cannot be created: {facts.base} is a file, not a folder",
            f"pass --data-dir with a path under a folder ({facts.base} is a file)",
        )
    if facts.write_problem is not None:
        where = "cannot be written" if facts.kind == "dir" else f"cannot be created in {facts.base}"
        return fail(
            name,
            f"{facts.path} {where}: {facts.write_problem}",
            f"make {facts.base} writable for this user (uid {os.geteuid()}), {elsewhere}",
        )
    if facts.kind == "missing":
        return ok(name, f"{facts.path} does not exist yet; `hershy serve` creates it")
    return ok(name, f"{facts.path} exists and is writable")


def check_data_dir_permissions(facts: DataDirFacts) -> Check | None:
    """Programs' sources, state and logs are their users' business: owner-only.

    None when there is no folder to judge and none will be made (`check_data_dir` failed).
    """
    name = "data dir permissions"
    if facts.kind == "missing" and facts.base_is_dir and facts.write_problem is None:
        return ok(name, "it will be created with mode 0700 (owner only)")
    if facts.kind != "dir" or facts.mode is None:
        return None
    if facts.mode & 0o077:
        return warn(
            name,
            f"mode {facts.mode:04o}: group or others can read programs' sources, state and logs",
            f"chmod 700 {facts.path} (`hershy serve` also sets 0700 when it starts)",
        )
    return ok(name, f"mode {facts.mode:04o} (owner only)")


def check_state_quota(where: Path, problem: str | None) -> Check:
    """Each program's /state is a loop-mounted ext4 of its size: can this machine make one?

    `problem` is why a test volume made in `where` failed, None if it held its size.
    """
    name = "state quotas"
    if problem is not None:
        return fail(
            name,
            f"a test volume in {where} failed: {problem}; programs could not start",
            "run the Host as root on a machine with loop devices (/dev/loop-control; "
            "`modprobe loop`), ext4 and e2fsprogs' mkfs.ext4 (`apt-get install e2fsprogs "
            "mount`); in a container, give it CAP_SYS_ADMIN and the loop devices",
        )
    return ok(
        name,
        f"a loop-mounted ext4 volume in {where} refused writes past its size (ENOSPC)",
    )


def state_quota_check(data_dir: Path) -> Check:
    """Try a real volume where programs' volumes go (else in the temp folder)."""
    where = data_dir if data_dir.is_dir() else Path(tempfile.gettempdir())
    try:
        state_volumes.probe(where)
    except (state_volumes.VolumeError, OSError) as error:
        return check_state_quota(where, str(error))
    return check_state_quota(where, None)


def check_disk(paths: Sequence[str], free_bytes: int) -> Check:
    name = "disk space"
    where = " and ".join(paths)
    detail = f"{free_bytes / 1024**3:.1f} GiB free for {where}"
    if free_bytes < LOW_DISK_BYTES:
        return warn(
            name,
            f"{detail} (under {LOW_DISK_BYTES // 1024**3} GiB: builds and logs may fill it)",
            "free space (`docker image prune`, `docker builder prune` for Docker's), "
            "or pass --data-dir on a roomier file system",
        )
    return ok(name, detail)


def check_port_range(taken: Sequence[int], total: int) -> Check:
    """The ports programs' WatcherAPIs are published on (each Host hands them out from 19001)."""
    name = "WatcherAPI ports"
    span = f"{PORT_RANGE.start}-{PORT_RANGE.stop - 1}"
    if not taken:
        return ok(name, f"all {total} ports {span} are bindable on 127.0.0.1")
    free = total - len(taken)
    shown = ", ".join(str(port) for port in taken[:5]) + (", …" if len(taken) > 5 else "")
    detail = f"{free} of {total} ports {span} bindable on 127.0.0.1; in use: {shown}"
    if free == 0:
        return fail(
            name,
            detail,
            "stop what listens there (another Host's programs?); `ss -ltnp` lists them",
        )
    return warn(
        name,
        f"{detail} (a program given one of these fails to start)",
        "stop what listens there (another Host's programs?); `ss -ltnp` lists them",
    )


# --- gathering the facts -----------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def bind_error(address: str) -> OSError | None:
    """What binding `address` raises, as the servers would bind it (SO_REUSEADDR)."""
    try:
        host, port = split_address(address)
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
    except socket.gaierror as error:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve it: {error}")
    except OSError as error:
        return error
    return None


def taken_ports(ports: Iterable[int]) -> list[int]:
    """The ports that cannot be bound on 127.0.0.1 right now.

    Each is held for microseconds only; binding all 11k takes well under a second.
    """
    taken = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    return taken


def inspect_data_dir(path: Path) -> DataDirFacts:
    """Looks, and tries to create (then removes) one file; never creates the folder itself."""
    path = path.absolute()
    try:
        info = path.stat()
    except FileNotFoundError:
        kind, mode = "missing", None
    except NotADirectoryError:  # an ancestor is a file
        kind, mode = "missing", None
    else:
        if stat.S_ISDIR(info.st_mode):
            kind, mode = "dir", stat.S_IMODE(info.st_mode)
        else:
            kind = "file" if stat.S_ISREG(info.st_mode) else "other"
            return DataDirFacts(path, kind, None, path, False, None)
    base = path
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        return DataDirFacts(path, kind, mode, base, False, None)
    # Root passes permission checks that os.access would report; only trying tells for sure
    # (a read-only mount, a full disk).
    problem: str | None = None
    try:
        handle, probe = tempfile.mkstemp(prefix=".hershy-doctor-", dir=base)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        problem = error.strerror or str(error)
    return DataDirFacts(path, kind, mode, base, True, problem)


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_checks(paths: Sequence[Path]) -> list[Check]:
    """One check per file system among `paths` (e.g. the data dir and Docker's root dir)."""
    by_device: dict[int, tuple[list[str], int]] = {}
    for path in paths:
        base = existing_ancestor(path)
        try:
            device = base.stat().st_dev
            free = shutil.disk_usage(base).free
        except OSError:
            continue
        names, _ = by_device.setdefault(device, ([], free))
        names.append(str(path))
    return [check_disk(names, free) for names, free in by_device.values()]


def runsc_version(path: str) -> str | None:
    """The first line of `runsc --version`, as the daemon would find the binary."""
    binary = path if os.path.isabs(path) else shutil.which(path)
    if binary is None or not os.access(binary, os.X_OK):
        return None
    try:
        result = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = result.stdout.strip().splitlines()
    return first[0] if result.returncode == 0 and first else None


def smoke_test(client: Any) -> Check:
    """Runs `uname -r` and dmesg in the base image under runsc: no network, nothing kept."""
    try:
        client.images.get(BASE_IMAGE)
    except ImageNotFound:
        return check_smoke(False, None, None)
    except DockerException as error:
        return check_smoke(True, None, str(error))
    try:
        output = client.containers.run(
            BASE_IMAGE,
            ["/bin/busybox", "sh", "-c", "uname -r; dmesg 2>&1 | head -n1"],
            name=f"hershy-doctor-{os.getpid()}-{time.monotonic_ns()}",
            runtime=SECURE_RUNTIME,
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            labels={DOCTOR_LABEL: "smoke"},
            remove=True,
            stdout=True,
            stderr=True,
        )
    except DockerException as error:
        return check_smoke(True, None, str(error).strip())
    return check_smoke(True, bytes(output).decode(errors="replace"), None)


@dataclass(frozen=True, slots=True)
class Options:
    data_dir: Path
    grpc_addr: str
    http_addr: str
    runtime: str
    deep: bool = False
    #: With `runtime` "kubernetes": the cluster to check.
    kubernetes: ClusterOptions = field(default_factory=ClusterOptions)


def docker_checks(options: Options) -> tuple[list[Check], list[Path]]:
    """The daemon's checks, and the folders whose disk space matters (Docker's root dir)."""
    info: dict[str, Any] | None = None
    version: dict[str, Any] | None = None
    problem: str | None = None
    client: Any = None
    try:
        # A short timeout: a daemon that hangs is as good as none, and the doctor must answer.
        client = docker.DockerClient(base_url=f"unix://{DEFAULT_SOCKET}", timeout=10)
        info, version = read_daemon(client)
    except DockerException as error:
        problem = str(error)
    try:
        checks = [check_daemon(info, version, problem)]
        if info is None:
            return checks, []
        if options.runtime == SECURE_RUNTIME:
            entry = runsc_entry(info)
            runsc = check_runsc(info, runsc_version(entry.path) if entry else None)
            checks += [runsc, check_network_mode(info), check_default_runtime(info)]
            if options.deep and runsc.level is Level.OK:
                # The first sandbox on a cold machine can take a while: a longer timeout.
                client.api.timeout = 120
                checks.append(smoke_test(client))
        else:
            checks.append(check_insecure_runtime(info, options.runtime))
        checks.append(check_live_restore(info))
        root = DaemonFingerprint.of(info).root_dir
        return checks, [Path(root)] if root else []
    finally:
        if client is not None:
            client.close()


def run_checks(options: Options) -> list[Check]:
    """Every check, in the order they are printed."""
    checks: list[Check] = []
    disk_paths = [options.data_dir]
    if options.runtime == "fake":
        checks.append(ok("runtime", "fake: no containers, so Docker is not needed"))
    elif options.runtime == "kubernetes":
        # Builds still run on this machine's Docker (under runsc); programs on the cluster.
        daemon_checks, docker_paths = docker_checks(replace(options, runtime=SECURE_RUNTIME))
        checks += daemon_checks
        disk_paths += docker_paths
        checks += [
            Check(Level(finding.level), f"kubernetes {finding.name}", finding.detail, finding.fix)
            for finding in check_cluster(options.kubernetes)
        ]
    else:
        daemon_checks, docker_paths = docker_checks(options)
        checks += daemon_checks
        disk_paths += docker_paths
    for name, address, option in (
        ("gRPC address", options.grpc_addr, "--grpc-addr"),
        ("HTTP address", options.http_addr, "--http-addr"),
    ):
        checks.append(check_address(name, address, option, bind_error(address)))
    if bind_error(options.http_addr) is not None:
        # Something listens there: if it is a Host, is it ready (recovery done)?
        checks.append(check_host_readiness(options.http_addr, *host_readiness(options.http_addr)))
    same = check_same_addresses(options.grpc_addr, options.http_addr)
    if same is not None:
        checks.append(same)
    facts = inspect_data_dir(options.data_dir)
    checks.append(check_data_dir(facts))
    permissions = check_data_dir_permissions(facts)
    if permissions is not None:
        checks.append(permissions)
    if options.runtime not in ("fake", "kubernetes"):  # on a cluster /state is a claim
        checks.append(state_quota_check(options.data_dir))
    checks += disk_checks(disk_paths)
    if options.runtime not in ("fake", "kubernetes"):
        # Only containers publish WatcherAPI ports; the fake runtime binds none.
        checks.append(check_port_range(taken_ports(PORT_RANGE), len(PORT_RANGE)))
    return checks


def render_text(checks: Sequence[Check]) -> str:
    lines = [line for check in checks for line in check.lines()]
    counts = {level: sum(check.level is level for check in checks) for level in Level}
    lines.append(
        f"doctor: {counts[Level.OK]} OK, {counts[Level.WARN]} WARN, {counts[Level.FAIL]} FAIL"
    )
    return "\n".join(lines)


def render_json(checks: Sequence[Check]) -> str:
    return json.dumps([check.as_json() for check in checks], indent=2)


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(check.level is Level.FAIL for check in checks) else 0
