"""`hershy deploy`'s and `hershy update`'s options for a program's readiness check,
restart policy and stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from google.protobuf.duration_pb2 import Duration

from hershy.v1 import program_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])

RESTART_MODES = {
    "always": pb.RESTART_MODE_ALWAYS,
    "on-failure": pb.RESTART_MODE_ON_FAILURE,
    "never": pb.RESTART_MODE_NEVER,
}


def _seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


def _values(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


OPTIONS = [
    click.option(
        "--ready-path",
        metavar="PATH",
        help="The WatcherAPI path that says it is ready (default /watcher/status).",
    ),
    click.option(
        "--ready-field",
        metavar="FIELD",
        help="The answer's JSON field with its state (default `state`; '' accepts any 2xx).",
    ),
    click.option(
        "--ready-values",
        metavar="A,B",
        help="Values of the field that mean ready (default Ready,Running).",
    ),
    click.option(
        "--failed-values",
        metavar="A,B",
        help="Values of the field that mean failed (default Crashed,Killed).",
    ),
    click.option(
        "--ready-timeout",
        type=click.FloatRange(min=1),
        metavar="S",
        help="How long a start may take to be ready (default: the Host's).",
    ),
    click.option(
        "--liveness-grace",
        type=click.FloatRange(min=1),
        metavar="S",
        help="After READY: no answer or a failed state this long is a crash (default 30).",
    ),
    click.option(
        "--restart",
        "restart_mode",
        type=click.Choice(list(RESTART_MODES)),
        help="always (default), on-failure (exit 0 ends it STOPPED) or never.",
    ),
    click.option(
        "--max-restarts",
        type=click.IntRange(min=0),
        metavar="N",
        help="At most N automatic restarts within --restart-window, then ERROR (0: no limit).",
    ),
    click.option(
        "--restart-window",
        type=click.FloatRange(min=1),
        metavar="S",
        help="The window --max-restarts counts in (default 600).",
    ),
    click.option(
        "--stop-signal",
        metavar="SIG",
        help="The signal that asks it to stop (default SIGTERM; e.g. SIGINT).",
    ),
    click.option(
        "--stop-grace",
        type=click.FloatRange(min=0),
        metavar="S",
        help="How long it has to exit after the signal (default: the Host's).",
    ),
]


def health_options(command: F) -> F:
    for option in reversed(OPTIONS):
        command = option(command)
    return command


def health_settings(
    *,
    ready_path: str | None,
    ready_field: str | None,
    ready_values: str | None,
    failed_values: str | None,
    ready_timeout: float | None,
    liveness_grace: float | None,
    restart_mode: str | None,
    max_restarts: int | None,
    restart_window: float | None,
    stop_signal: str | None,
    stop_grace: float | None,
) -> dict[str, Any]:
    """`Client.create`'s keyword arguments for what was given (the Host fills the rest in)."""
    settings: dict[str, Any] = {}
    readiness = pb.ReadinessCheck(
        path=ready_path or "",
        ready_values=_values(ready_values),
        failed_values=_values(failed_values),
    )
    if ready_field is not None:
        readiness.field = ready_field
    if ready_timeout is not None:
        readiness.timeout.CopyFrom(_seconds(ready_timeout))
    if liveness_grace is not None:
        readiness.liveness_grace.CopyFrom(_seconds(liveness_grace))
    if readiness.ByteSize() or readiness.HasField("field"):
        settings["readiness"] = readiness
    if restart_mode or max_restarts or restart_window:
        policy = pb.RestartPolicy(
            mode=RESTART_MODES[restart_mode or "always"], max_restarts=max_restarts or 0
        )
        if restart_window is not None:
            policy.window.CopyFrom(_seconds(restart_window))
        settings["restart_policy"] = policy
    if stop_signal or stop_grace is not None:
        stop = pb.StopSettings(signal=(stop_signal or "").upper())
        if stop_grace is not None:
            stop.grace.CopyFrom(_seconds(stop_grace))
        settings["stop"] = stop
    return settings


#: Each option's field path in UpdateProgram's mask: `hershy update` changes what it is given.
UPDATE_MASK_PATHS = {
    "ready_path": "readiness.path",
    "ready_field": "readiness.field",
    "ready_values": "readiness.ready_values",
    "failed_values": "readiness.failed_values",
    "ready_timeout": "readiness.timeout",
    "liveness_grace": "readiness.liveness_grace",
    "restart_mode": "restart_policy.mode",
    "max_restarts": "restart_policy.max_restarts",
    "restart_window": "restart_policy.window",
    "stop_signal": "stop.signal",
    "stop_grace": "stop.grace",
}


def update_mask(given: dict[str, Any]) -> list[str]:
    """The mask paths of the options given (not None), in the options' order."""
    return [path for option, path in UPDATE_MASK_PATHS.items() if given.get(option) is not None]
