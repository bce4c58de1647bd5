"""The composition root: the one place adapters are chosen and wired together."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import ipaddress
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from hershy.adapters import host_key
from hershy.adapters.docker.port_pool import PortPool
from hershy.adapters.docker.settings import DockerSettings, ProgramRunSettings
from hershy.adapters.fake_runtime import FakeBehaviour, FakeEffectHandler
from hershy.adapters.kubernetes.settings import KubernetesSettings
from hershy.adapters.log_files import FileLogStore
from hershy.adapters.source_files import FileSourceStore
from hershy.adapters.sqlite_store import SqliteEventLog, StoreError
from hershy.adapters.system import RandomIds, SystemClock
from hershy.domain.build_policy import BuildPolicy
from hershy.domain.model import BackoffPolicy
from hershy.entrypoints.grpc_server import GrpcServer
from hershy.service.auth import Authenticator
from hershy.service.ports import LogStore
from hershy.service.quotas import Quotas
from hershy.service.registry import Registry
from hershy.service.secrets import RedactingLogStore, Secrets, SecretValues

if TYPE_CHECKING:  # docker-py, requests and lightkube are imported only by their runtime
    from hershy.adapters.docker.runtime import DockerEffectHandler
    from hershy.adapters.kubernetes.runtime import KubernetesRuntime

log = logging.getLogger("hershy")


class Runtime(enum.Enum):
    RUNSC = "runsc"
    RUNC = "runc"
    FAKE = "fake"
    #: Each program a Pod on a Kubernetes cluster, under its gVisor RuntimeClass.
    KUBERNETES = "kubernetes"


@dataclass(frozen=True)
class HostConfig:
    data_dir: Path
    runtime: Runtime = Runtime.RUNSC
    grpc_addr: str = "127.0.0.1:9090"
    http_addr: str = "127.0.0.1:9000"
    allow_insecure_runtime: bool = False
    #: On shutdown, stop every program first (by default they keep running and
    #: are adopted when the Host starts again).
    stop_programs_on_exit: bool = False
    #: Skip tokens: every caller is the admin. Refused unless both addresses are loopback.
    no_auth: bool = False
    #: Write the admin's token here (mode 0600) on the first start instead of showing it.
    admin_token_file: Path | None = None
    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    docker: DockerSettings = field(default_factory=DockerSettings)
    fake_behaviour: FakeBehaviour = field(default_factory=FakeBehaviour)
    #: With `runtime` KUBERNETES: the cluster (the build and probe settings are `docker`'s).
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    #: Where the runtime publishes programs' WatcherAPIs (None: the whole range, each
    #: port checked free with the OS). Tests narrow it, or make its check lie.
    port_pool: PortPool | None = None


@contextlib.asynccontextmanager
async def effect_handler(
    config: HostConfig,
    sources: FileSourceStore,
    logs: LogStore,
    host_id: str,
    secrets: SecretValues | None = None,
) -> AsyncIterator[DockerEffectHandler | FakeEffectHandler | KubernetesRuntime]:
    """The runtime programs run on, for as long as the Host runs (it places them too)."""
    ports = config.port_pool or PortPool()
    if config.runtime is Runtime.FAKE:
        async with FakeEffectHandler(sources, logs, config.fake_behaviour, ports) as fake:
            yield fake
        return
    if config.runtime is Runtime.KUBERNETES:
        # The settings both runtimes share come from the Docker ones (the flags set those):
        # every field of ProgramRunSettings, so none is left at its default by omission.
        shared = {f.name: getattr(config.docker, f.name) for f in fields(ProgramRunSettings)}
        cluster = replace(config.kubernetes, **{**shared, "host_id": host_id})
        from hershy.adapters.kubernetes.runtime import KubernetesRuntime

        async with KubernetesRuntime(cluster, sources, logs, secrets=secrets) as kubernetes:
            yield kubernetes
        return
    from hershy.adapters.docker.runtime import DockerEffectHandler

    settings = replace(
        config.docker,
        runtime=config.runtime.value,
        allow_insecure_runtime=config.allow_insecure_runtime,
        host_id=host_id,
    )
    async with DockerEffectHandler(settings, sources, logs, ports, secrets=secrets) as handler:
        yield handler


@contextlib.asynccontextmanager
async def running_host(config: HostConfig) -> AsyncIterator[tuple[Registry, GrpcServer]]:
    """The Host, serving until the context exits; then it shuts down in order."""
    if config.no_auth and not (is_loopback(config.grpc_addr) and is_loopback(config.http_addr)):
        raise OSError(
            "--no-auth is allowed only when both addresses are on loopback "
            f"(gRPC {config.grpc_addr}, HTTP {config.http_addr})"
        )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.data_dir, 0o700)  # sources, state and logs are the users' business
    sources = FileSourceStore(config.data_dir)
    logs = FileLogStore(sources.root)
    store = SqliteEventLog(config.data_dir)
    # Reading 10,000 programs makes objects that all live on: the collector, run
    # every 700 of them, would walk the growing heap again and again for nothing.
    gc.disable()
    try:
        recovered = store.open()
    finally:
        gc.enable()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(store.close)
        try:
            # Its own 0600 file, never in the store: a copied hershy.db reveals no secret.
            box = host_key.load_or_create(config.data_dir, store_has_secrets=bool(store.secrets()))
            secrets = Secrets(store, box, SystemClock())
        except host_key.HostKeyError as error:
            raise StoreError(str(error)) from None
        await secrets.keep_only({program.id for program in recovered.programs})
        # What the runtime writes to programs' logs (builds, output) loses their secrets first.
        runtime_logs = RedactingLogStore(logs, secrets)
        handler = await stack.enter_async_context(
            effect_handler(config, sources, runtime_logs, store.host_id, secrets)
        )
        # The base-image allowlist, resolved to image ids once: builds must still find them.
        build_policy = BuildPolicy(await handler.resolve_base_images(config.docker.base_images))
        clock = SystemClock()
        registry = Registry(
            handler=handler,
            sources=sources,
            logs=logs,
            event_log=store,
            clock=clock,
            timers=clock,
            ids=RandomIds(),
            policy=config.policy,
            build_policy=build_policy,
            quotas=Quotas(store),
            secrets=secrets,
        )
        if not isinstance(handler, FakeEffectHandler):
            handler.prober.observe = registry.metrics.observe_probe
        auth = Authenticator(store, clock, RandomIds(), enabled=not config.no_auth)
        if config.no_auth:
            log.warning("--no-auth: every caller is the admin (allowed on loopback only)")
        # Bound before anything starts, so a taken address is a plain error.
        server = GrpcServer(registry, auth, config.grpc_addr)
        await stack.enter_async_context(registry)
        # One ordered step, in the background: the runtime is reconciled (what runs is
        # looked at, output written meanwhile copied, orphans reaped; retried while Docker
        # fails), then the supervisors go. Until then /readyz answers 503 with the reason.
        await registry.recover(recovered.programs, recovered.revision, store.changes_after)
        # Each program's revision records are read when it first needs them.
        registry.read_revisions_from(store.revisions_of)
        if recovered.programs:
            log.info("recovered %d programs from %s", len(recovered.programs), store.path)
            stack.push_async_callback(_cancel, asyncio.create_task(_report_reconciled(registry)))
        # What recovery read lives as long as the Host: later collections skip it.
        gc.freeze()
        admin_secret = await auth.ensure_admin()
        if admin_secret is not None:
            show_admin_token(admin_secret, config.admin_token_file)
        await server.start()
        # The REST shim is a client of the gRPC core, through a real channel. (Imported
        # here to keep the shim's wiring in one place.)
        from hershy.entrypoints.rest import RestConfig, RestServer

        rest = RestServer(
            RestConfig(
                grpc_address=server.address,
                http_address=config.http_addr,
                auth_enabled=not config.no_auth,
                # Admin, in memory only: the proxy's view of every program.
                service_token=auth.internal_secret() if not config.no_auth else None,
                metrics=registry.metrics,
                not_ready_reason=registry.not_ready_reason,
                # Revoking a token cuts the proxied streams it opened at once.
                revocations=auth.on_revoke,
                # The runtime says where a program's address leads, and which it hands out.
                watcher_endpoint=handler.watcher_endpoint,
                # The proxy's first view read here, not streamed through gRPC.
                seed=registry.current,
            )
        )
        try:
            await rest.start()
        except BaseException:
            await server.stop(grace=0)
            raise
        log.info(
            "Hershy serving gRPC on %s, REST on http://%s (runtime %s, data dir %s)",
            server.address,
            rest.address,
            registry.runtime,
            config.data_dir,
        )
        try:
            yield registry, server
        finally:
            if config.stop_programs_on_exit:
                log.info("stopping every program before exiting (--stop-programs-on-exit)")
                await registry.stop_all(seconds=config.docker.stop_grace + 20)
            # Streams first: a server stop waits its whole grace while one is open.
            registry.hub.close()
            logs.close()
            # The shim's streams and proxied requests end before the core they call.
            await rest.stop()
            await server.stop(grace=5.0)
            log.info("Hershy stopped")


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def show_admin_token(secret: str, into: Path | None) -> None:
    """The admin's token, shown once: on the terminal (never through logging), or in a file."""
    if into is not None:
        into.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(into, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secret + "\n")
        log.info("the admin's token was written to %s (mode 0600); it is not shown again", into)
        return
    print(
        "\n  Hershy made the admin's API token. It is shown this once; keep it safe:\n\n"
        f"      {secret}\n\n"
        "  Use it as `authorization: Bearer <token>` (gRPC) or `Authorization: Bearer <token>`\n"
        "  (REST), or export HERSHY_TOKEN for the hershy CLI.\n",
        file=sys.stderr,
        flush=True,
    )


async def _report_reconciled(registry: Registry) -> None:
    started = time.monotonic()
    await registry.reconciled()
    log.info("every recovered program reconciled in %.2f s", time.monotonic() - started)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def serve(config: HostConfig) -> None:
    """Run the Host until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running_host(config):
        await stop.wait()
        log.info("shutting down")
