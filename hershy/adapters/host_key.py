"""The Host key that seals programs' secrets in the store: AES-256-GCM, in a 0600 file.

The key lives in its own file beside the store (`DATA_DIR/secrets.key`), never
in it: a copy of `hershy.db` alone reveals no secret. It is made on the first
start; a store holding sealed secrets while the key file is missing stops the
Host (a new key could open none of them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "secrets.key"
KEY_BYTES = 32
NONCE_BYTES = 12
#: What a sealed value starts with: the format, so a later one can be told apart.
FORMAT = b"hk1:"


class HostKeyError(Exception):
    """The Host key cannot be used; the message says what to do."""


class HostKeyBox:
    """Seals and opens values with the Host key (the `SecretBox` port)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise HostKeyError(f"the Host key must be {KEY_BYTES} bytes, not {len(key)}")
        self._key = key
        self._cipher: AESGCM | None = None

    @property
    def _aead(self) -> AESGCM:
        # Loaded on the first secret sealed or opened: `cryptography` is 5.6 MiB of an
        # idle Host's RSS, and a Host whose programs have no secrets never needs it.
        if self._cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._cipher = AESGCM(self._key)
        return self._cipher

    def seal(self, value: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return FORMAT + nonce + self._aead.encrypt(nonce, value, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        if not sealed.startswith(FORMAT) or len(sealed) < len(FORMAT) + NONCE_BYTES + 16:
            raise HostKeyError("a stored secret is not in a format this Hershy knows")
        body = sealed[len(FORMAT) :]
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], context)
        except InvalidTag:
            raise HostKeyError(
                "a stored secret does not open with this Host's key: the key file was replaced "
                "or the store was copied from another Host. Restore the matching "
                f"{KEY_FILE}, or delete the program's secrets and set them again."
            ) from None


def load_or_create(data_dir: Path, *, store_has_secrets: bool) -> HostKeyBox:
    """The Host key from `DATA_DIR/secrets.key`, made (mode 0600) when there is none yet."""
    path = data_dir / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if store_has_secrets:
            raise HostKeyError(
                f"the store holds sealed secrets but the Host key {path} is missing: restore it "
                "from a backup (without it no secret can be opened)"
            ) from None
        key = os.urandom(KEY_BYTES)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
        return HostKeyBox(key)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise HostKeyError(
            f"the Host key {path} is readable by others (mode {mode:o}): chmod 600 it"
        )
    return HostKeyBox(key)
