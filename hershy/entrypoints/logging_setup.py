"""How the Host logs: text or JSON lines, every line about a program carrying its id.

Log calls about a program start with "program %s" and pass the id first; a
filter lifts it into a `program_id` field. Another filter redacts anything
shaped like a token, so a secret never reaches a log even by mistake.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from hershy.domain.auth import TOKEN_PREFIX

_SECRET = re.compile(rf"{TOKEN_PREFIX}[A-Za-z0-9_-]{{8,}}|(?i:bearer)\s+\S+")
PROGRAM_PREFIX = "program %s"


class ProgramIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "program_id", None) is None:
            args = record.args
            is_about_a_program = isinstance(record.msg, str) and record.msg.startswith(
                PROGRAM_PREFIX
            )
            record.program_id = (
                args[0] if is_about_a_program and isinstance(args, tuple) and args else None
            )
        return True


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRET.sub("[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        program_id = getattr(record, "program_id", None)
        if program_id is not None:
            line["program_id"] = program_id
        if record.exc_info:
            line["error"] = _SECRET.sub("[redacted]", self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def configure(level: int, json_lines: bool) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(ProgramIdFilter())
    handler.addFilter(RedactingFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp logs every malformed request with a traceback: anyone could fill the log.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
