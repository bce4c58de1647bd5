"""Program logs as JSON lines in `DATA_DIR/programs/<id>/logs/`, with live followers.

One file per program, rotated once it passes `max_bytes` (the previous file
is kept as `program.log.1`), so a chatty program cannot fill the disk.
Followers get new lines through a bounded buffer each; one that falls behind
is told how many lines it missed instead of holding memory.

Reads run on a queue of their own (work_queue.py), never behind other work
such as saving a big source.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import IO

from hershy.domain.model import LogLine, LogStream
from hershy.service.work_queue import WorkQueue

log = logging.getLogger(__name__)

FILE_NAME = "program.log"
FOLLOWER_BUFFER = 10_000
#: Files kept open for appending; the least recently written are closed first.
OPEN_FILES = 64
#: Threads for reading (and removing) logs, and how many reads may wait for one.
READ_WORKERS = 4
READ_BACKLOG = 64


class _Follower:
    def __init__(self) -> None:
        self.lines: deque[LogLine] = deque()
        self.missed = 0
        self.closed = False
        self.wakeup = asyncio.Event()

    def offer(self, line: LogLine) -> None:
        if len(self.lines) >= FOLLOWER_BUFFER:
            self.lines.popleft()
            self.missed += 1
        self.lines.append(line)
        self.wakeup.set()


class FileLogStore:
    def __init__(
        self, root: Path, max_bytes: int = 10 * 1024 * 1024, reads: WorkQueue | None = None
    ) -> None:
        """`root` holds one folder per program (the source store's `programs/`)."""
        self._root = root
        self._reads = reads or WorkQueue("hershy-log-reads", READ_WORKERS, READ_BACKLOG)
        self._max_bytes = max_bytes
        self._files: OrderedDict[str, IO[str]] = OrderedDict()
        self._followers: dict[str, set[_Follower]] = {}

    def _dir(self, program_id: str) -> Path:
        return self._root / program_id / "logs"

    def write(self, program_id: str, line: LogLine) -> None:
        try:
            file = self._open(program_id)
            file.write(_encode(line) + "\n")
            file.flush()
            if file.tell() > self._max_bytes:
                self._rotate(program_id)
        except OSError as error:  # a full disk must not stop the program's lifecycle
            log.warning("program %s: cannot write its log: %s", program_id, error)
        for follower in self._followers.get(program_id, ()):
            follower.offer(line)

    def lines(
        self, program_id: str, tail: int | None, streams: Collection[LogStream], follow: bool
    ) -> AsyncIterator[LogLine]:
        wanted = frozenset(streams)
        follower: _Follower | None = None
        if follow:
            # Registered now, in the same step as noting where the file ends:
            # older lines come from the file, newer ones from the follower.
            follower = _Follower()
            self._followers.setdefault(program_id, set()).add(follower)
        try:
            end: int | None = (self._dir(program_id) / FILE_NAME).stat().st_size
        except FileNotFoundError:
            end = None
        return self._lines(program_id, tail, wanted, follower, end)

    async def _lines(
        self,
        program_id: str,
        tail: int | None,
        streams: frozenset[LogStream],
        follower: _Follower | None,
        end: int | None,
    ) -> AsyncIterator[LogLine]:
        try:
            for line in await self._reads.run(self._read, program_id, tail, streams, end):
                yield line
            while follower is not None:
                if follower.missed:
                    missed, follower.missed = follower.missed, 0
                    yield LogLine(
                        0.0, LogStream.HOST, 0, f"[{missed} lines dropped: reader too slow]"
                    )
                if follower.lines:
                    line = follower.lines.popleft()
                    if not streams or line.stream in streams:
                        yield line
                    continue
                if follower.closed:
                    return
                follower.wakeup.clear()
                await follower.wakeup.wait()
        finally:
            if follower is not None:
                followers = self._followers.get(program_id)
                if followers is not None:
                    followers.discard(follower)
                    if not followers:
                        del self._followers[program_id]

    async def remove(self, program_id: str) -> None:
        file = self._files.pop(program_id, None)
        if file is not None:
            file.close()
        for follower in self._followers.pop(program_id, set()):
            follower.closed = True
            follower.wakeup.set()
        await self._reads.run(shutil.rmtree, self._dir(program_id), True)

    def close(self) -> None:
        """Close the files and end every follow (the Host is shutting down)."""
        for file in self._files.values():
            file.close()
        self._files.clear()
        for followers in self._followers.values():
            for follower in followers:
                follower.closed = True
                follower.wakeup.set()

    def last_mark(self, program_id: str, prefix: str) -> tuple[str, int] | None:
        """The mark of the newest line whose mark starts with `prefix`, and how many
        lines carry that very mark (the current file, then the rotated one); None if none."""
        directory = self._dir(program_id)
        needle = f'"m": {json.dumps(prefix, ensure_ascii=False)[:-1]}'
        for path in (directory / FILE_NAME, directory / (FILE_NAME + ".1")):
            try:
                data = path.read_bytes().decode("utf-8", errors="replace")
            except FileNotFoundError:
                continue
            found: str | None = None
            count = 0
            for raw in reversed(data.splitlines()):
                if needle not in raw:
                    continue
                line = _decode(raw)
                if line is None or not line.mark.startswith(prefix):
                    continue
                if found is None:
                    found = line.mark
                elif line.mark != found:
                    break
                count += 1
            if found is not None:
                return found, count
        return None

    async def prepare(self, program_id: str) -> None:
        """Open a new program's log on a worker thread (its folder made, a cut last
        line ended), so that its first line costs the event loop no file-system work:
        done on the loop, it was the largest part of a create's time there."""
        if program_id in self._files:
            return
        file = await self._reads.run(self._open_file, program_id)
        if program_id in self._files:  # a line was written meanwhile: it opened one
            file.close()
            return
        self._keep(program_id, file)

    def _open(self, program_id: str) -> IO[str]:
        file = self._files.get(program_id)
        if file is None:
            file = self._open_file(program_id)
            self._keep(program_id, file)
        else:
            self._files.move_to_end(program_id)
        return file

    def _open_file(self, program_id: str) -> IO[str]:
        directory = self._dir(program_id)
        directory.mkdir(parents=True, exist_ok=True)
        _end_cut_line(directory / FILE_NAME)
        return open(directory / FILE_NAME, "a", encoding="utf-8")

    def _keep(self, program_id: str, file: IO[str]) -> None:
        self._files[program_id] = file
        if len(self._files) > OPEN_FILES:
            self._files.popitem(last=False)[1].close()

    def _rotate(self, program_id: str) -> None:
        self._files.pop(program_id).close()
        current = self._dir(program_id) / FILE_NAME
        current.replace(current.with_name(FILE_NAME + ".1"))

    def _read(
        self, program_id: str, tail: int | None, streams: frozenset[LogStream], end: int | None
    ) -> list[LogLine]:
        """Lines of the rotated file, then of the current one up to byte `end` (None: all)."""
        directory = self._dir(program_id)
        lines: deque[LogLine] = deque(maxlen=tail)
        for path, limit in ((directory / (FILE_NAME + ".1"), None), (directory / FILE_NAME, end)):
            try:
                with open(path, "rb") as file:
                    data = file.read() if limit is None else file.read(limit)
            except FileNotFoundError:
                continue
            for raw in data.decode("utf-8", errors="replace").splitlines():
                line = _decode(raw)
                if line is not None and (not streams or line.stream in streams):
                    lines.append(line)
        return list(lines)


def _end_cut_line(path: Path) -> None:
    """End a last line a crash cut short, so the next line is not glued to it (and lost)."""
    try:
        with open(path, "rb+") as file:
            if file.seek(0, 2) > 0:
                file.seek(-1, 2)
                if file.read(1) != b"\n":
                    file.write(b"\n")
    except FileNotFoundError:
        pass


def _encode(line: LogLine) -> str:
    fields: dict[str, object] = {
        "t": line.at,
        "s": line.stream.name.lower(),
        "r": line.run,
        "l": line.text,
    }
    if line.mark:
        fields["m"] = line.mark
    return json.dumps(fields, ensure_ascii=False)


def _decode(raw: str) -> LogLine | None:
    try:
        data = json.loads(raw)
        return LogLine(
            float(data["t"]),
            LogStream[data["s"].upper()],
            int(data["r"]),
            data["l"],
            str(data.get("m", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a line cut short by a crash: skip it, keep the rest
