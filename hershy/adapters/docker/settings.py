"""The Docker runtime's settings, and the errors its start raises, without docker-py.

`hershy serve` builds these before it knows which runtime it runs; the fake runtime
(and `hershy`'s other commands) never import docker-py, requests or urllib3, whose
import is a fifth of a Host's start and 8 MiB of its memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hershy.adapters import machine
from hershy.adapters.docker.compose import SECURE_RUNTIME
from hershy.adapters.docker.engine import DEFAULT_SOCKET
from hershy.adapters.docker.secret_files import DEFAULT_ROOT as SECRETS_ROOT
from hershy.adapters.watcher_probe import ProberSettings
from hershy.domain import limits
from hershy.domain.model import Resources
from hershy.domain.validation import ResourcePolicy


class BaseImageRefused(Exception):
    """A base image on the allowlist cannot be used; the Host does not start."""


@dataclass(frozen=True)
class BuildLimits:
    """Every limit on builds (`hershy serve --build-*`); the defaults are `domain/limits.py`'s."""

    #: Each RUN step's memory (and memory+swap: no swap) and CPU.
    memory_bytes: int = limits.BUILD_MEMORY_BYTES
    milli_cpus: int = 1000
    #: Host threads of each build's RUN steps (gVisor's own threads included).
    pids: int = limits.BUILD_PIDS
    #: All builds together: the parent cgroup's limits.
    total_memory_bytes: int = limits.BUILD_TOTAL_MEMORY_FACTOR * limits.BUILD_MEMORY_BYTES
    total_pids: int = limits.BUILD_TOTAL_PIDS_FACTOR * limits.BUILD_PIDS
    #: What a build may write: each step container's writable layer, and each image it makes.
    max_image_bytes: int = limits.BUILD_MAX_IMAGE_BYTES
    #: No new build (and a running one is cancelled) while Docker's disk has less free.
    min_free_disk_bytes: int = limits.BUILD_MIN_FREE_DISK_BYTES
    #: Builds at once on the Host (fitted to the machine), and per user.
    max_concurrent: int = limits.machine_builds_at_once(machine.CORES, machine.MEMORY_BYTES)
    max_per_user: int = limits.BUILDS_AT_ONCE_PER_USER
    #: How often a running build's writes and the free disk are looked at.
    watch_interval: float = 0.5


@dataclass(frozen=True)
class ProgramRunSettings:
    """What the Docker and the Kubernetes runtime are both configured with: both build on
    this Host's Docker daemon and probe programs' WatcherAPIs."""

    #: Labels everything this Host makes; only what carries it is ever reaped.
    host_id: str = "default"
    #: The Docker daemon builds (and, on Docker, programs) run on.
    socket: str = DEFAULT_SOCKET
    build_timeout: float = 600.0
    ready_timeout: float = 60.0
    ready_poll_interval: float = 0.2
    stop_grace: float = 10.0
    #: The liveness prober of READY programs.
    prober: ProberSettings = field(default_factory=ProberSettings)
    #: The contract check's bounds: the Host's maxima, defined once (ResourcePolicy).
    max_resources: Resources = field(default_factory=lambda: ResourcePolicy().maximum)
    #: The base-image allowlist (`--base-image`): the only images a FROM may name.
    base_images: tuple[str, ...] = ("hershy-busybox:latest",)
    build_limits: BuildLimits = field(default_factory=BuildLimits)


@dataclass(frozen=True)
class DockerSettings(ProgramRunSettings):
    #: The OCI runtime programs run under: runsc (gVisor), or runc when allowed.
    runtime: str = SECURE_RUNTIME
    allow_insecure_runtime: bool = False
    #: Program containers created and started at once (fitted to the machine's cores).
    starts_at_once: int = field(
        default_factory=lambda: limits.machine_starts_at_once(machine.CORES)
    )
    #: Where programs' secrets are mounted (a tmpfs each), outside the data dir.
    secrets_root: Path = SECRETS_ROOT

    @property
    def allowed_runtimes(self) -> frozenset[str]:
        if self.allow_insecure_runtime:
            return frozenset({SECURE_RUNTIME, "runc"})
        return frozenset({SECURE_RUNTIME})
