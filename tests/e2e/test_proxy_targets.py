"""Where the proxy sends a request is the runtime's word, never the proxy's own parsing.

A shim of our own, on a real `hershy serve --runtime fake` core, is given a
runtime rule (`RestConfig.watcher_endpoint`, which the composition root
takes from the runtime): an address the rule refuses is never connected to,
and an address is reached where the rule says, whatever the address looks
like.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from hershy.adapters.docker.port_pool import loopback_endpoint
from hershy.entrypoints.rest import RestConfig, RestServer
from hershy.service.ports import WatcherEndpoint
from tests.e2e.conftest import free_port
from tests.e2e.rest_support import (
    RestHost,
    fake_watcher,
    ready_program,
    running_rest_server,
    target_port,
)


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-proxy-targets")) as host:
        yield host


@asynccontextmanager
async def shim(host: RestHost, rule: Callable[[str], WatcherEndpoint | None]) -> AsyncIterator[str]:
    server = RestServer(
        RestConfig(
            grpc_address=host.grpc_address,
            http_address="127.0.0.1:0",
            auth_enabled=False,
            watcher_endpoint=rule,
        )
    )
    await server.start()
    try:
        yield f"http://{server.address}"
    finally:
        await server.stop()


async def test_an_address_the_runtime_refuses_is_never_connected_to(
    rest_host: RestHost, http: aiohttp.ClientSession
) -> None:
    program = await ready_program(http, rest_host)
    asked: list[str] = []

    def refuse(address: str) -> WatcherEndpoint | None:
        asked.append(address)
        return None

    async with (
        shim(rest_host, refuse) as base,
        fake_watcher(target_port(program)) as watcher,
        http.get(f"{base}/programs/{program['program_id']}/watcher/status") as response,
    ):
        body = await response.json()
    assert response.status == 502, body
    assert body["error"] == "BAD_PROXY_TARGET", body
    assert asked == [program["proxy_target"]]
    assert watcher.seen == [], "the proxy connected to an address its runtime refused"


async def test_the_proxy_goes_where_the_runtime_says_the_address_leads(
    rest_host: RestHost, http: aiohttp.ClientSession
) -> None:
    """As a cluster runtime would map a pod's address: the proxy connects to its endpoint."""
    program = await ready_program(http, rest_host)
    elsewhere = free_port()

    def relocate(address: str) -> WatcherEndpoint | None:
        if address != program["proxy_target"]:
            return None
        return WatcherEndpoint("127.0.0.1", elsewhere)

    async with (
        shim(rest_host, relocate) as base,
        fake_watcher(target_port(program)) as where_it_was,
        fake_watcher(elsewhere) as where_the_runtime_says,
        http.get(f"{base}/programs/{program['program_id']}/watcher/status") as response,
    ):
        assert response.status == 200, await response.text()
    assert len(where_the_runtime_says.seen) == 1
    assert where_it_was.seen == []


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:9090",  # the Host's gRPC
        "127.0.0.1:9000",  # the Host's REST
        "127.0.0.1:19000",
        "127.0.0.1:30000",
        "127.0.0.1:019001",
        "0.0.0.0:19001",
        "10.0.0.7:19001",
        "localhost:19001",
        "[::1]:19001",
        "127.0.0.1:19001/x",
        " 127.0.0.1:19001",
        "127.0.0.1:19001\n",
        "",
    ],
)
def test_the_loopback_rule_takes_only_loopback_watcher_ports(address: str) -> None:
    assert loopback_endpoint(address) is None


def test_the_loopback_rule_takes_the_addresses_the_docker_runtime_hands_out() -> None:
    assert loopback_endpoint("127.0.0.1:19001") == WatcherEndpoint("127.0.0.1", 19001)
    assert loopback_endpoint("127.0.0.1:29999") == WatcherEndpoint("127.0.0.1", 29999)
