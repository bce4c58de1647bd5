"""What the Docker daemon offers, read once from `docker info` / `docker version`.

Nomad's docker driver calls this its fingerprint. The runtime reads it when it
opens (to say how programs run, and to refuse a runtime the daemon lacks) and
`hershy doctor` reads it for its checks: one reading of the daemon's answers,
so the two never disagree about what they mean.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hershy.adapters.docker.compose import SECURE_RUNTIME

if TYPE_CHECKING:  # docker-py is imported only where the Docker runtime runs
    import docker


class RuntimeUnavailable(Exception):
    """Docker or the runtime cannot be used; the message says how to fix it."""


class NetworkMode(enum.Enum):
    """How runsc gives a sandbox its network (its `--network` flag)."""

    #: gVisor's own network stack (the default).
    NETSTACK = "netstack"
    #: The host kernel's network stack, in the container's namespace: weaker isolation.
    HOST = "host"
    #: No network: no published port reaches a program.
    NONE = "none"


@dataclass(frozen=True, slots=True)
class OciRuntime:
    """One runtime registered with the daemon (daemon.json's `runtimes`)."""

    path: str
    args: tuple[str, ...]

    @property
    def network(self) -> NetworkMode:
        if "--network=host" in self.args:
            return NetworkMode.HOST
        if "--network=none" in self.args:
            return NetworkMode.NONE
        return NetworkMode.NETSTACK


@dataclass(frozen=True, slots=True)
class DaemonFingerprint:
    server_version: str
    #: The Engine API version it speaks ("" when `docker version` was not read).
    api_version: str
    storage_driver: str
    runtimes: Mapping[str, OciRuntime]
    default_runtime: str | None
    live_restore: bool
    #: Where Docker keeps images and layers (its disk matters to builds).
    root_dir: str | None

    @classmethod
    def of(
        cls, info: Mapping[str, Any], version: Mapping[str, Any] | None = None
    ) -> DaemonFingerprint:
        """Read from the answers of `docker info` (and `docker version`)."""
        runtimes = {}
        for name, entry in (info.get("Runtimes") or {}).items():
            if isinstance(entry, dict):
                args = tuple(str(arg) for arg in entry.get("runtimeArgs") or [])
                runtimes[str(name)] = OciRuntime(str(entry.get("path", "?")), args)
        root = info.get("DockerRootDir")
        default = info.get("DefaultRuntime")
        return cls(
            server_version=str(info.get("ServerVersion", "?")),
            api_version=str((version or {}).get("ApiVersion", "")),
            storage_driver=str(info.get("Driver", "?")),
            runtimes=runtimes,
            default_runtime=None if default is None else str(default),
            live_restore=info.get("LiveRestoreEnabled") is True,
            root_dir=str(root) if root else None,
        )


def read_daemon(client: docker.DockerClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """The daemon's answers to `docker info` and `docker version` (raises DockerException)."""
    return client.info(), client.version()


class RuntimeChoice(Protocol):
    """What the Host was asked to run programs under."""

    @property
    def runtime(self) -> str: ...

    @property
    def allow_insecure_runtime(self) -> bool: ...


def describe_runtime(choice: RuntimeChoice, info: Mapping[str, Any]) -> str:
    """How programs run, as users are shown it; refuses a runtime the daemon lacks."""
    daemon = DaemonFingerprint.of(info)
    if choice.runtime not in daemon.runtimes:
        raise RuntimeUnavailable(
            f"the Docker daemon has no runtime {choice.runtime!r} (it has "
            f"{', '.join(sorted(daemon.runtimes)) or 'none'}). Register it with "
            "scripts/setup-host.sh."
        )
    if choice.runtime != SECURE_RUNTIME:
        if not choice.allow_insecure_runtime:
            raise RuntimeUnavailable(
                f"runtime {choice.runtime!r} is not a sandbox; "
                "start the Host with --allow-insecure-runtime to use it anyway"
            )
        return f"{choice.runtime} (INSECURE: no sandbox)"
    if daemon.default_runtime != SECURE_RUNTIME:
        raise RuntimeUnavailable(
            f"the Docker daemon's default runtime is {daemon.default_runtime!r}: the RUN "
            "steps of builds would run outside gVisor. Run scripts/setup-host.sh."
        )
    network = daemon.runtimes[SECURE_RUNTIME].network
    # `none` is refused by doctor; here it is shown as what it is.
    return f"runsc (gVisor, network={network.value})"
