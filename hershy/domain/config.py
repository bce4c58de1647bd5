"""A program's names and configuration: its alias, environment variables and secrets.

Pure checks and the limits they enforce, each defined once here. Every error
names the field that is wrong and never repeats a secret's value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from hershy.domain.errors import InvalidArgument, QuotaExceeded, TooLarge
from hershy.domain.validation import cut

#: A user-chosen name: lower case, a letter first, like a DNS label.
ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")
#: What the Host's own ids look like (`prog-` and 12 hex digits): an alias never does,
#: so `programs/{x}` is never ambiguous between an id and an alias.
RESERVED_ALIAS_PREFIX = "prog-"

#: Environment variable names: upper case, digits and `_`, not starting with a digit.
ENV_NAME_PATTERN = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
#: Secret names are file names under /run/secrets and, if asked, variable names too.
SECRET_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: The Host's own namespace, in variables and secrets alike (any case).
RESERVED_PREFIX = "HERSHY_"

MAX_ENV_VARS = 64
MAX_ENV_VALUE_BYTES = 4096
MAX_ENV_TOTAL_BYTES = 32 * 1024

MAX_SECRETS = 32
MAX_SECRET_BYTES = 64 * 1024
#: All of a program's secrets together: also the size of its memory-backed secrets dir.
MAX_SECRETS_TOTAL_BYTES = 256 * 1024

#: Where the program finds its secrets, one file each.
SECRETS_DIR = "/run/secrets"

Env = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What anyone may know of a secret: never its value."""

    name: str
    version: int
    created_at: float
    updated_at: float
    #: Also handed to the program as an environment variable of the same name.
    as_env: bool = False


def validate_alias(alias: str, field: str = "alias") -> str:
    if not ALIAS_PATTERN.fullmatch(alias):
        raise InvalidArgument(
            field,
            f"{cut(alias)} is not a valid name: use 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter",
        )
    if alias.startswith(RESERVED_ALIAS_PREFIX):
        raise InvalidArgument(
            field, f"{cut(alias)}: names starting with {RESERVED_ALIAS_PREFIX!r} are program ids"
        )
    return alias


def _check_name(name: str, pattern: re.Pattern[str], field: str, what: str) -> None:
    if not pattern.fullmatch(name):
        raise InvalidArgument(field, f"{cut(name)} is not a valid {what}")
    if name.upper().startswith(RESERVED_PREFIX):
        raise InvalidArgument(
            field, f"{cut(name)}: names starting with {RESERVED_PREFIX} are the Host's"
        )


def validate_env_name(name: str, field: str = "env") -> str:
    _check_name(name, ENV_NAME_PATTERN, f"{field}[{cut(name)}]", "variable name ([A-Z_][A-Z0-9_]*)")
    return name


def validate_env(env: Mapping[str, str], field: str = "env") -> Env:
    """The variables as the program gets them, sorted by name; refused over a limit."""
    if len(env) > MAX_ENV_VARS:
        raise QuotaExceeded(
            f"{field}: a program has at most {MAX_ENV_VARS} variables; these would be {len(env)}",
            quota="env_vars",
            limit=MAX_ENV_VARS,
            usage=len(env),
        )
    total = 0
    for name, value in env.items():
        validate_env_name(name, field)
        size = len(value.encode())
        if "\x00" in value:
            raise InvalidArgument(f"{field}[{cut(name)}]", "the value must not contain NUL")
        if size > MAX_ENV_VALUE_BYTES:
            raise TooLarge(
                f"{field}[{cut(name)}]", f"the value is {size} bytes; at most {MAX_ENV_VALUE_BYTES}"
            )
        total += len(name) + size
    if total > MAX_ENV_TOTAL_BYTES:
        raise TooLarge(field, f"{total} bytes in all; at most {MAX_ENV_TOTAL_BYTES}")
    return tuple(sorted(env.items()))


def changed_env(current: Env, set_: Mapping[str, str], unset: list[str], field: str = "env") -> Env:
    """`current` with `set_` applied and `unset` removed (a name in both is refused)."""
    for name in unset:
        validate_env_name(name, "unset")
        if name in set_:
            raise InvalidArgument(f"unset[{cut(name)}]", "is also in set")
    merged = {name: value for name, value in current if name not in unset}
    merged.update(set_)
    return validate_env(merged, field)


def validate_secret_name(name: str, field: str = "secret_id") -> str:
    _check_name(name, SECRET_NAME_PATTERN, field, "secret name ([A-Za-z_][A-Za-z0-9_]*)")
    return name


def validate_secret_value(value: bytes, field: str = "value") -> bytes:
    if not value:
        raise InvalidArgument(field, "is required (a secret cannot be empty)")
    if len(value) > MAX_SECRET_BYTES:
        # The size only: an error message never repeats a secret.
        raise TooLarge(field, f"the secret is {len(value)} bytes; at most {MAX_SECRET_BYTES}")
    return value


def check_secret_room(existing: Mapping[str, int], name: str, size: int) -> None:
    """Refuse a secret that would pass the count or the total size.

    `existing`: each secret's name and size, the one being replaced included.
    """
    others = {key: value for key, value in existing.items() if key != name}
    if len(others) + 1 > MAX_SECRETS:
        raise QuotaExceeded(
            f"a program has at most {MAX_SECRETS} secrets; delete one first",
            quota="secrets",
            limit=MAX_SECRETS,
            usage=len(others),
        )
    total = sum(others.values()) + size
    if total > MAX_SECRETS_TOTAL_BYTES:
        raise QuotaExceeded(
            f"a program's secrets hold at most {MAX_SECRETS_TOTAL_BYTES} bytes in all; "
            f"these would be {total}",
            quota="secret_bytes",
            limit=MAX_SECRETS_TOTAL_BYTES,
            usage=sum(others.values()),
        )
