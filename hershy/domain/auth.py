"""Who calls, and what they may see. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hershy.domain.model import Program

#: What every token's secret starts with: easy to spot in a leaked config, or to redact.
TOKEN_PREFIX = "hershy_"
ADMIN_USER = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a token stands for."""

    user_id: str
    admin: bool = False

    def sees(self, program: Program) -> bool:
        """A user sees only their own programs; the admin sees every program."""
        return self.admin or program.user_id == self.user_id


#: The caller when the Host runs with --no-auth (loopback only).
NOBODY_CHECKED = Principal(ADMIN_USER, admin=True)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as the Host keeps it: never the secret, only its hash."""

    id: str
    secret_hash: str
    user_id: str
    admin: bool
    created_at: float
    revoked_at: float | None = None

    @property
    def principal(self) -> Principal:
        return Principal(self.user_id, self.admin)


def hash_secret(secret: str) -> str:
    """Secrets are 256 random bits, so a plain SHA-256 is enough (no password stretching)."""
    return hashlib.sha256(secret.encode()).hexdigest()
