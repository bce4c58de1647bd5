"""The `hershy` command line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from hershy.adapters.docker_runtime import RuntimeUnavailable
from hershy.bootstrap import HostConfig, Runtime, serve


def _address(value: str, option: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint=option)
    return value


@click.group()
def main() -> None:
    """Hershy: run other people's long-running programs safely."""


@main.command("serve")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/lib/hershy"),
    show_default=True,
    help="Where programs' sources, state and logs live.",
)
@click.option("--grpc-addr", default="127.0.0.1:9090", show_default=True, help="gRPC API address.")
@click.option("--http-addr", default="127.0.0.1:9000", show_default=True, help="REST API address.")
@click.option(
    "--runtime",
    type=click.Choice([runtime.value for runtime in Runtime]),
    default=Runtime.RUNSC.value,
    show_default=True,
    help="runsc: gVisor. runc: no sandbox (insecure). fake: no containers at all (demos, tests).",
)
@click.option(
    "--allow-insecure-runtime",
    is_flag=True,
    help="Allow --runtime runc: programs then run WITHOUT the gVisor sandbox.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def serve_command(
    data_dir: Path,
    grpc_addr: str,
    http_addr: str,
    runtime: str,
    allow_insecure_runtime: bool,
    verbose: bool,
) -> None:
    """Start the Host and serve until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = HostConfig(
        data_dir=data_dir,
        runtime=Runtime(runtime),
        grpc_addr=_address(grpc_addr, "--grpc-addr"),
        http_addr=_address(http_addr, "--http-addr"),
        allow_insecure_runtime=allow_insecure_runtime,
    )
    try:
        asyncio.run(serve(config))
    except (RuntimeUnavailable, OSError) as error:
        raise click.ClickException(str(error)) from None
