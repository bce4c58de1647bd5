"""The `hershy` command line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hershy.adapters import machine
from hershy.domain import limits
from hershy.domain.model import BackoffPolicy
from hershy.entrypoints import cli_commands

#: `hershy.bootstrap.Runtime`'s values, spelled out so that the client commands
#: start without importing the Host (Docker, aiohttp: most of a second);
#: tests/e2e/test_cli.py checks they match. `serve` and `doctor` import it.
RUNTIMES = ("runsc", "runc", "fake", "kubernetes")
DEFAULT_DATA_DIR = Path("/var/lib/hershy")
DEFAULT_GRPC_ADDR = "127.0.0.1:9090"
DEFAULT_HTTP_ADDR = "127.0.0.1:9000"
MIB = limits.MiB
#: The crash-restart delays `serve` uses unless told (`--backoff`).
BACKOFF = BackoffPolicy()
Command = TypeVar("Command", bound=Callable[..., Any])


def _address(value: str, option: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint=option)
    return value


@click.group(epilog=cli_commands.EXIT_CODES_HELP)
@cli_commands.group_options
@click.pass_context
def main(ctx: click.Context, target: str, http_url: str, token: str | None) -> None:
    """Hershy: run other people's long-running programs safely.

    `serve` runs a Host; the other commands talk to one (this machine's by
    default, or any with --target, --http and a token). Read commands take
    --json: the API's messages as JSON (JSON lines for streams).
    """
    ctx.obj = cli_commands.make_settings(target, http_url, token)


def _host_options(*, doctor: bool) -> Callable[[Command], Command]:
    """The options `serve` and `doctor` share: where the Host keeps its data and listens,
    and its runtime (the doctor checks what `serve` would use)."""
    options = [
        click.option(
            "--data-dir",
            # The doctor takes any path: a file given there is its to report, not a usage error.
            type=click.Path(path_type=Path)
            if doctor
            else click.Path(file_okay=False, path_type=Path),
            default=DEFAULT_DATA_DIR,
            show_default=True,
            help="The data dir `serve` would use."
            if doctor
            else "Where programs' sources, state and logs live.",
        ),
        click.option(
            "--grpc-addr", default=DEFAULT_GRPC_ADDR, show_default=True, help="gRPC API address."
        ),
        click.option(
            "--http-addr", default=DEFAULT_HTTP_ADDR, show_default=True, help="REST API address."
        ),
        click.option(
            "--runtime",
            type=click.Choice(RUNTIMES),
            default="runsc",
            show_default=True,
            help="The runtime `serve` would use (fake: skip the Docker checks)."
            if doctor
            else "runsc: gVisor. runc: no sandbox (insecure). fake: no containers at all "
            "(demos, tests). kubernetes: a Pod per program on a cluster, under gVisor.",
        ),
        click.option(
            "--kubeconfig",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="With --runtime kubernetes: the kubeconfig of the Host's user "
            "(default: $KUBECONFIG, then ~/.kube/config).",
        ),
        click.option(
            "--namespace",
            default="hershy",
            show_default=True,
            help="With --runtime kubernetes: the namespace programs' Pods run in.",
        ),
        click.option(
            "--runtime-class",
            default="gvisor",
            show_default=True,
            help="With --runtime kubernetes: the RuntimeClass (gVisor's) every Pod names.",
        ),
        click.option(
            "--registry",
            default="127.0.0.1:5000",
            show_default=True,
            metavar="HOST:PORT",
            help="With --runtime kubernetes: where images are pushed and nodes pull them from.",
        ),
        click.option(
            "--storage-class",
            default=None,
            help="With --runtime kubernetes: the StorageClass of programs' /state claims "
            "(default: the cluster's default).",
        ),
    ]

    def decorate(command: Command) -> Command:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@main.command("serve")
@_host_options(doctor=False)
@click.option(
    "--allow-insecure-runtime",
    is_flag=True,
    help="Allow --runtime runc: programs then run WITHOUT the gVisor sandbox.",
)
@click.option(
    "--stop-grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL when a program is stopped.",
)
@click.option(
    "--ready-timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds a started program has to answer GET /watcher/status before it is an error.",
)
@click.option(
    "--build-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Seconds an image build may take.",
)
@click.option(
    "--base-image",
    "base_images",
    multiple=True,
    default=("hershy-busybox:latest",),
    show_default=True,
    metavar="NAME",
    help="An image a Dockerfile's FROM may name (repeat for more); resolved to its id at start.",
)
@click.option(
    "--build-memory",
    type=click.IntRange(min=16),
    default=limits.BUILD_MEMORY_BYTES // MIB,
    show_default=True,
    metavar="MIB",
    help="Memory of each build's RUN steps; all builds together get "
    f"{limits.BUILD_TOTAL_MEMORY_FACTOR}x this.",
)
@click.option(
    "--build-pids",
    type=click.IntRange(min=32),
    default=limits.BUILD_PIDS,
    show_default=True,
    help="Host threads of each build's RUN steps (gVisor's own included); all builds: "
    f"{limits.BUILD_TOTAL_PIDS_FACTOR}x.",
)
@click.option(
    "--build-max-size",
    type=click.IntRange(min=1),
    default=limits.BUILD_MAX_IMAGE_BYTES // MIB,
    show_default=True,
    metavar="MIB",
    help="What a build may write: each RUN step's layer and each image it makes.",
)
@click.option(
    "--build-min-free-disk",
    type=click.IntRange(min=0),
    default=limits.BUILD_MIN_FREE_DISK_BYTES // MIB,
    show_default=True,
    metavar="MIB",
    help="No builds while Docker's root dir has less free space than this.",
)
@click.option(
    "--builds",
    type=(click.IntRange(min=1), click.IntRange(min=1)),
    default=(
        limits.machine_builds_at_once(machine.CORES, machine.MEMORY_BYTES),
        limits.BUILDS_AT_ONCE_PER_USER,
    ),
    show_default=True,
    metavar="HOST USER",
    help="Builds at once: on the Host (default: one per core, at most one per 4 GiB of "
    "memory), and per user (the rest wait in a fair queue).",
)
@click.option(
    "--backoff",
    type=(click.FloatRange(min=0.01), click.FloatRange(min=0.01)),
    default=(BACKOFF.initial, BACKOFF.cap),
    show_default=True,
    metavar="FIRST MAX",
    help="Delay before restarting a crashed program: FIRST, doubling up to MAX seconds.",
)
@click.option(
    "--probe-interval",
    type=click.FloatRange(min=0.5, max=3600),
    default=10.0,
    show_default=True,
    metavar="S",
    help="Seconds between liveness probes of each READY program (jittered by 20%).",
)
@click.option(
    "--probe-concurrency",
    type=click.IntRange(min=1, max=1024),
    default=32,
    show_default=True,
    help="Liveness probes in flight at once, Host-wide.",
)
@click.option(
    "--stop-programs-on-exit",
    is_flag=True,
    help="Stop every program when the Host exits (by default they keep running and are "
    "adopted when it starts again).",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Accept calls without a token (every caller is the admin). Loopback addresses only.",
)
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="On the first start, write the admin's token here (mode 0600) instead of showing it.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line, with program_id on lines about a program.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def serve_command(
    data_dir: Path,
    grpc_addr: str,
    http_addr: str,
    runtime: str,
    kubeconfig: Path | None,
    namespace: str,
    runtime_class: str,
    registry: str,
    storage_class: str | None,
    allow_insecure_runtime: bool,
    stop_grace: float,
    ready_timeout: float,
    build_timeout: float,
    base_images: tuple[str, ...],
    build_memory: int,
    build_pids: int,
    build_max_size: int,
    build_min_free_disk: int,
    builds: tuple[int, int],
    backoff: tuple[float, float],
    probe_interval: float,
    probe_concurrency: int,
    stop_programs_on_exit: bool,
    no_auth: bool,
    admin_token_file: Path | None,
    log_format: str,
    verbose: bool,
) -> None:
    """Start the Host and serve until SIGTERM or SIGINT."""
    from hershy.adapters.docker.fingerprint import RuntimeUnavailable
    from hershy.adapters.docker.settings import BaseImageRefused, BuildLimits, DockerSettings
    from hershy.adapters.kubernetes.settings import KubernetesSettings
    from hershy.adapters.kubernetes.settings import RuntimeUnavailable as ClusterUnavailable
    from hershy.adapters.sqlite_store import StoreError
    from hershy.adapters.watcher_probe import ProberSettings
    from hershy.bootstrap import HostConfig, Runtime, serve
    from hershy.domain.model import BackoffPolicy
    from hershy.entrypoints.logging_setup import configure as configure_logging

    configure_logging(logging.DEBUG if verbose else logging.INFO, json_lines=log_format == "json")
    config = HostConfig(
        # Absolute: Docker takes a relative bind-mount source for a volume name.
        data_dir=data_dir.absolute(),
        runtime=Runtime(runtime),
        grpc_addr=_address(grpc_addr, "--grpc-addr"),
        http_addr=_address(http_addr, "--http-addr"),
        allow_insecure_runtime=allow_insecure_runtime,
        stop_programs_on_exit=stop_programs_on_exit,
        no_auth=no_auth,
        admin_token_file=admin_token_file,
        policy=BackoffPolicy(initial=backoff[0], cap=max(backoff)),
        kubernetes=KubernetesSettings(
            kubeconfig=kubeconfig,
            namespace=namespace,
            runtime_class=runtime_class,
            registry=registry,
            storage_class=storage_class,
        ),
        docker=DockerSettings(
            stop_grace=stop_grace,
            ready_timeout=ready_timeout,
            build_timeout=build_timeout,
            base_images=base_images,
            prober=ProberSettings(interval=probe_interval, concurrency=probe_concurrency),
            build_limits=BuildLimits(
                memory_bytes=build_memory * MIB,
                total_memory_bytes=limits.BUILD_TOTAL_MEMORY_FACTOR * build_memory * MIB,
                pids=build_pids,
                total_pids=limits.BUILD_TOTAL_PIDS_FACTOR * build_pids,
                max_image_bytes=build_max_size * MIB,
                min_free_disk_bytes=build_min_free_disk * MIB,
                max_concurrent=builds[0],
                max_per_user=builds[1],
            ),
        ),
    )
    try:
        asyncio.run(serve(config))
    except (RuntimeUnavailable, ClusterUnavailable, BaseImageRefused, StoreError, OSError) as error:
        raise click.ClickException(str(error)) from None


@main.command("doctor")
@_host_options(doctor=True)
@click.option("--deep", is_flag=True, help="Also run a container under runsc (about a second).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as a JSON list.")
def doctor_command(
    data_dir: Path,
    grpc_addr: str,
    http_addr: str,
    runtime: str,
    kubeconfig: Path | None,
    namespace: str,
    runtime_class: str,
    registry: str,
    storage_class: str | None,
    deep: bool,
    as_json: bool,
) -> None:
    """Check this machine for `serve`: say what is wrong and how to fix it (exit 1 on a FAIL)."""
    from hershy.adapters.kubernetes.doctor import ClusterOptions
    from hershy.entrypoints import doctor

    options = doctor.Options(
        data_dir=data_dir,
        grpc_addr=_address(grpc_addr, "--grpc-addr"),
        http_addr=_address(http_addr, "--http-addr"),
        runtime=runtime,
        deep=deep,
        kubernetes=ClusterOptions(
            kubeconfig=kubeconfig,
            namespace=namespace,
            runtime_class=runtime_class,
            registry=registry,
            storage_class=storage_class,
        ),
    )
    checks = doctor.run_checks(options)
    click.echo(doctor.render_json(checks) if as_json else doctor.render_text(checks))
    raise SystemExit(doctor.exit_code(checks))


cli_commands.register(main)
