"""Tokens as the Host keeps them. Pure. (Who a caller is, and what they may see and do,
is decided in one place: `hershy.service.auth`.)"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: What every token's secret starts with: easy to spot in a leaked config, or to redact.
TOKEN_PREFIX = "hershy_"
ADMIN_USER = "admin"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as the Host keeps it: never the secret, only its hash."""

    id: str
    secret_hash: str
    user_id: str
    admin: bool
    created_at: float
    revoked_at: float | None = None


def hash_secret(secret: str) -> str:
    """Secrets are 256 random bits, so a plain SHA-256 is enough (no password stretching)."""
    return hashlib.sha256(secret.encode()).hexdigest()
