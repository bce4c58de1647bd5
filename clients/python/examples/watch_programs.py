#!/usr/bin/env python3
"""Print every state change of every program, across disconnects and Host restarts.

    HERSHY_TOKEN=… python clients/python/examples/watch_programs.py --target 127.0.0.1:9090

One line per program per change (the snapshot first), columns separated by
spaces:

    TIME                      PROGRAM            STATE     REVISION  KIND
    2026-01-02T03:04:05.678Z  prog-1a2b3c4d5e6f  READY     rev=42    updated/container_ready

KIND is the message type (snapshot, created, updated, deleted) and, for a
change, the event that caused it. Lines starting with `#` are about the
stream itself: `# synced at revision N` ends a snapshot, `# resync: …` means
everything printed before is stale and a fresh snapshot follows. When the
Host goes away the watcher waits for it (0.2 s doubling to 5 s between
attempts, logged on stderr) and resumes after the last revision it printed,
so no change is printed twice or skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from types import FrameType

from hershy_client import Client, HershyError, Resync, WatchItem, pb

Response = pb.WatchProgramsResponse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", default="127.0.0.1:9090", help="the Host's gRPC address")
    parser.add_argument(
        "--token",
        default=os.environ.get("HERSHY_TOKEN"),
        help="the API token (default: $HERSHY_TOKEN; none: send no token)",
    )
    parser.add_argument("--secure", action="store_true", help="use TLS (system roots)")
    parser.add_argument("--program", default=None, help="watch only this program (id or name)")
    parser.add_argument(
        "--resume-revision",
        type=int,
        default=None,
        help="start after this revision instead of with a snapshot",
    )
    parser.add_argument("--verbose", action="store_true", help="log reconnects in detail")
    return parser.parse_args(argv)


def describe(item: WatchItem) -> str:
    """One output line for a stream item."""
    if isinstance(item, Resync):
        return f"# resync ({item.reason.value}): {item.message}"
    if item.type == Response.TYPE_SYNCED:
        return f"# synced at revision {item.revision}"
    program = item.program
    kind = Response.Type.Name(item.type).removeprefix("TYPE_").lower()
    if item.HasField("event"):
        when = item.event.time.ToDatetime(UTC)
        kind = f"{kind}/{item.event.WhichOneof('kind')}"
    elif program.HasField("update_time"):
        when = program.update_time.ToDatetime(UTC)
    else:
        when = datetime.now(UTC)
    state = pb.State.Name(program.state).removeprefix("STATE_")
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"{stamp}  {program.id:<18} {state:<9} rev={item.revision:<6} {kind}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # SIGTERM and Ctrl-C only set a flag. Raising from a signal handler could
    # interrupt gRPC while it holds a lock, so the watch runs in a thread and
    # the main thread stops it by closing the client, which ends watch_forever.
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    failures: list[HershyError] = []
    with Client(args.target, token=args.token, secure=args.secure) as hershy:

        def watch() -> None:
            try:
                for item in hershy.watch_forever(args.resume_revision, args.program):
                    print(describe(item), flush=True)
            except HershyError as error:  # one a retry cannot fix, e.g. NotFound
                failures.append(error)
            finally:
                stop.set()

        watcher = threading.Thread(target=watch, name="watch", daemon=True)
        watcher.start()
        while not stop.wait(0.5):
            pass
    watcher.join(5)
    for error in failures:
        print(f"watch_programs: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
