"""The real clock and id generator."""

from __future__ import annotations

import secrets
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
