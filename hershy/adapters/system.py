"""The real clock and id generator."""

from __future__ import annotations

import secrets
import time


class SystemClock:
    def now(self) -> float:
        return time.time()


class RandomIds:
    def new_program_id(self) -> str:
        return "prog-" + secrets.token_hex(6)
