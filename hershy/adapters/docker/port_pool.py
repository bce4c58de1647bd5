"""Loopback ports for programs' WatcherAPIs, handed out by the runtime at every start.

The runtime owns where a program is reached: it takes a port when it creates a
container and gives it back when that container is removed. Ports go round the
range (a port just given back is the last to be handed out again, so a late
request meant for the old container meets nothing), and a port the OS will not
let us bind right now (another Host's container, any other process) is skipped.
A port can still be taken between the check and Docker binding it; the Docker
runtime then asks for another (see `runtime`).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hershy.adapters.docker.compose import PORT_RANGE, WATCHER_PORT
from hershy.domain.errors import ResourceExhausted
from hershy.service.ports import WatcherEndpoint

#: Where WatcherAPIs are published: loopback only.
LOOPBACK = "127.0.0.1"
#: The one shape of address this runtime hands out (and older Hosts stored): `127.0.0.1:PORT`.
_LOOPBACK_ADDRESS = re.compile(r"127\.0\.0\.1:([0-9]{1,5})")


def loopback_address(port: int) -> str:
    """The address the Host reaches a WatcherAPI published on `port` at."""
    return f"{LOOPBACK}:{port}"


def loopback_endpoint(address: str) -> WatcherEndpoint | None:
    """Where to connect for a WatcherAPI at `address`: only a loopback address on a
    WatcherAPI port (the only kind this runtime hands out), else None. So even a
    corrupted store cannot make the Host connect to its own services (gRPC, REST)
    or anywhere off the machine."""
    match = _LOOPBACK_ADDRESS.fullmatch(address)
    port = int(match[1]) if match else 0
    return WatcherEndpoint(LOOPBACK, port) if port in PORT_RANGE else None


def loopback_port_is_free(port: int) -> bool:
    """True if nothing holds `port` on 127.0.0.1 (a WatcherAPI port must be bindable there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


class PortPool:
    """The WatcherAPI ports of one Host: never one port to two containers."""

    def __init__(
        self,
        ports: range = PORT_RANGE,
        is_free: Callable[[int], bool] = loopback_port_is_free,
    ) -> None:
        """`is_free` tells whether the OS lets a port be bound right now."""
        inside = ports and PORT_RANGE.start <= ports[0] and ports[-1] < PORT_RANGE.stop
        if not inside or ports.step != 1:
            raise ValueError(f"WatcherAPI ports must be a range within {PORT_RANGE}")
        self._ports = ports
        self._is_free = is_free
        self._held: set[int] = set()
        self._next = 0  # index into `ports` where the next search begins

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    def take(self) -> int:
        """The next port nobody holds and the OS lets us bind; held until released."""
        size = len(self._ports)
        for offset in range(size):
            index = (self._next + offset) % size
            port = self._ports[index]
            if port not in self._held and self._is_free(port):
                self._held.add(port)
                self._next = (index + 1) % size
                return port
        raise ResourceExhausted(
            f"all {size} WatcherAPI ports ({self._ports[0]}-{self._ports[-1]}) are in use: "
            "delete programs you no longer need"
        )

    def hold(self, port: int) -> None:
        """Mark a port taken that a container already publishes (found after a Host restart)."""
        if port in self._ports:
            self._held.add(port)

    def release(self, port: int) -> None:
        self._held.discard(port)


@dataclass(frozen=True, slots=True)
class Published:
    """The WatcherAPI port a container of the program's run publishes."""

    program_id: str
    run: int
    port: int


def published_port(attrs: dict[str, Any]) -> int | None:
    """The host port a container publishes its WatcherAPI on, from `docker inspect`."""
    bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    for binding in bindings.get(f"{WATCHER_PORT}/tcp") or []:
        port = str(binding.get("HostPort", ""))
        if port.isdigit():
            return int(port)
    return None
