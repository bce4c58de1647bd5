"""The runtime's WatcherAPI port pool: unique ports, round the range, skipping taken ones."""

from __future__ import annotations

import socket

import pytest
from docker.errors import APIError

from hershy.adapters.docker.port_pool import PortPool, loopback_address, loopback_port_is_free
from hershy.adapters.docker.runtime import port_taken, published_port
from hershy.domain.errors import ResourceExhausted


def test_the_pool_skips_ports_something_else_holds() -> None:
    taken = {19001, 19002}
    ports = PortPool(range(19001, 19005), is_free=lambda port: port not in taken)
    assert ports.take() == 19003
    assert ports.take() == 19004
    with pytest.raises(ResourceExhausted, match="19001-19004"):
        ports.take()


def test_a_port_given_back_is_the_last_handed_out_again() -> None:
    ports = PortPool(range(19001, 19004), is_free=lambda _: True)
    first = ports.take()
    ports.release(first)
    assert [ports.take(), ports.take(), ports.take()] == [19002, 19003, first]


def test_a_held_port_is_never_handed_out_twice() -> None:
    ports = PortPool(range(19001, 19003), is_free=lambda _: True)
    ports.hold(19001)  # an adopted container's, found after a Host restart
    ports.hold(30500)  # outside the range: nothing to hold
    assert ports.take() == 19002
    with pytest.raises(ResourceExhausted):
        ports.take()
    assert ports.held == {19001, 19002}


def test_the_real_check_skips_a_port_a_listener_holds() -> None:
    port = next(p for p in range(19001, 30000) if loopback_port_is_free(p))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        assert not loopback_port_is_free(port)
        with pytest.raises(ResourceExhausted):
            PortPool(range(port, port + 1)).take()
    assert PortPool(range(port, port + 1)).take() == port


@pytest.mark.parametrize("ports", [range(8000, 8010), range(19001, 30001), range(19001, 19001)])
def test_the_pool_stays_within_the_watcher_range(ports: range) -> None:
    with pytest.raises(ValueError, match="19001"):
        PortPool(ports)


def test_the_address_is_loopback() -> None:
    assert loopback_address(19001) == "127.0.0.1:19001"


# --- what the Docker runtime reads from Docker about ports -------------------------------


def test_the_published_port_is_read_from_the_containers_bindings() -> None:
    attrs = {
        "HostConfig": {"PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "19005"}]}}
    }
    assert published_port(attrs) == 19005
    for nothing in (
        {},
        {"HostConfig": None},
        {"HostConfig": {"PortBindings": None}},
        {"HostConfig": {"PortBindings": {"9090/tcp": [{"HostPort": "19005"}]}}},
        {"HostConfig": {"PortBindings": {"8080/tcp": [{"HostPort": ""}]}}},
        {"HostConfig": {"PortBindings": {"8080/tcp": [{"HostPort": "19005; rm -rf"}]}}},
    ):
        assert published_port(nothing) is None, nothing


@pytest.mark.parametrize(
    ("explanation", "taken"),
    [
        (
            "driver failed programming external connectivity on endpoint x (y): "
            "Bind for 127.0.0.1:19001 failed: port is already allocated",
            True,
        ),
        (
            "driver failed programming external connectivity on endpoint x (y): Error starting "
            "userland proxy: listen tcp4 127.0.0.1:19001: bind: address already in use",
            True,
        ),
        ("OCI runtime create failed: runsc did not start", False),
        ("", False),
    ],
)
def test_docker_saying_a_port_is_taken_is_told_from_other_failures(
    explanation: str, taken: bool
) -> None:
    error = APIError("500 Server Error", explanation=explanation)
    assert port_taken(error) is taken
