"""Log lines: program ids as a field, JSON on request, no secrets ever."""

from __future__ import annotations

import json
import logging

import pytest

from hershy.entrypoints.logging_setup import JsonFormatter, ProgramIdFilter, RedactingFilter


def render(message: str, *args: object, json_lines: bool = True) -> str:
    record = logging.LogRecord("hershy.test", logging.INFO, __file__, 1, message, args, None)
    for check in (ProgramIdFilter(), RedactingFilter()):
        check.filter(record)
    formatter = JsonFormatter() if json_lines else logging.Formatter("%(message)s")
    return formatter.format(record)


def test_lines_about_a_program_carry_its_id() -> None:
    line = json.loads(render("program %s: %s (%s)", "prog-1", "READY", "ContainerReady"))
    assert line["program_id"] == "prog-1"
    assert line["message"] == "program prog-1: READY (ContainerReady)"
    assert line["level"] == "info"
    assert "program_id" not in json.loads(render("Hershy serving on %s", "127.0.0.1:9090"))


@pytest.mark.parametrize(
    "leak",
    [
        "hershy_eeNrEtVdSYgjEqAonhAKVxkN1UHRcDvv320yiA8pRyU",
        "Bearer abc.def-123",
        "bearer hershy_short12345",
    ],
)
def test_anything_shaped_like_a_token_is_redacted(leak: str) -> None:
    for json_lines in (True, False):
        text = render("the header was %s, oops", leak, json_lines=json_lines)
        assert leak not in text
        assert "[redacted]" in text
