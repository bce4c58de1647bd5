"""The real clock and id generator."""

from __future__ import annotations

import secrets
import socket
import time

from hershy.domain.auth import TOKEN_PREFIX


class SystemClock:
    def now(self) -> float:
        return time.time()


class RandomIds:
    def new_program_id(self) -> str:
        return "prog-" + secrets.token_hex(6)

    def new_token(self) -> tuple[str, str]:
        return "tok-" + secrets.token_hex(6), TOKEN_PREFIX + secrets.token_urlsafe(32)


def loopback_port_is_free(port: int) -> bool:
    """True if nothing holds `port` on 127.0.0.1 (a WatcherAPI port must be bindable there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
