"""ListPrograms' pages: a stable order (creation), and opaque tokens naming where a page ends."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hershy.domain.errors import InvalidArgument
from hershy.domain.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from hershy.domain.model import Program


@dataclass(frozen=True, slots=True)
class Page:
    programs: list[Program]
    next_page_token: str
    total_size: int


def page_of(
    matching: Sequence[Program], position: Mapping[str, int], page_size: int, page_token: str
) -> Page:
    """The page of `matching` (in creation order) after `page_token`.

    `position` is each program's place in creation order; a token names the
    last place its page showed, so programs created or deleted meanwhile
    shift no page.
    """
    if page_size < 0:
        raise InvalidArgument("page_size", "must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = decode_page_token(page_token)
    remaining = [p for p in matching if position[p.id] > after]
    page = remaining[:size]
    token = encode_page_token(position[page[-1].id]) if len(remaining) > size else ""
    return Page(page, token, len(matching))


def encode_page_token(position: int) -> str:
    return base64.urlsafe_b64encode(f"after:{position}".encode()).decode()


def decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        prefix, _, position = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if prefix != "after" or not position.isdigit():
            raise ValueError(token)
        return int(position)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token", "is not a token from a previous ListPrograms response"
        ) from None
