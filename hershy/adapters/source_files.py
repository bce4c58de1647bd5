"""Programs' build inputs on disk: `DATA_DIR/programs/<id>/src/`.

Each program's folder is written completely before the Create call is
answered (files first, then a marker), so a half-written source is never
taken for a whole one. The files are made durable together, with one
`syncfs` of the file system after the last of them (an fsync per file cost
a journal commit each: 10,000 files took about 40 s), and only then is the
marker written and synced, so a marker on disk always means whole files.
Saves under way at once share their syncs (`GroupSync`): each waits for one
that began after its writes, so many creates cost about two syncs in all.

The work runs on a queue of its own (work_queue.py): saving one tenant's
big source never holds the threads other work needs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from hershy.domain.errors import NotFound
from hershy.domain.validation import DOCKERFILE_PATH, PROGRAM_ID_PATTERN, ProgramSource
from hershy.service.work_queue import WorkQueue

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
#: Threads for saving, loading and removing sources, and how many jobs may wait for one.
SOURCE_WORKERS = 16
SOURCE_BACKLOG = 32


def _syncfs_function() -> Callable[[int], int] | None:
    """Linux's syncfs(2): every dirty page of one file system to disk, in one go."""
    try:
        function: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    return function


_SYNCFS = _syncfs_function()


class GroupSync:
    """`syncfs` shared by the threads that need one at once (group commit for files).

    A caller needs a sync that *began* after its writes: if one is under way it
    waits for it to end and for the next, which one of the waiting callers runs
    for all of them. So N saves at once cost about two syncs, not N.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._begun = 0
        self._ended = 0
        self._running = False
        #: Whether the sync that ended last worked.
        self._last_worked = True

    def sync(self, directory: Path) -> bool:
        """Whether `directory`'s file system was synced after this call began."""
        with self._changed:
            needed = self._begun + 1
            while self._ended < needed:
                if self._running:
                    self._changed.wait()
                    continue
                self._running = True
                self._begun += 1
                number = self._begun
                self._changed.release()
                ok = False
                try:
                    ok = _syncfs(directory)
                finally:
                    self._changed.acquire()
                    self._running = False
                    self._ended = number
                    self._last_worked = ok
                    self._changed.notify_all()
            # The last sync to end began after this call did: what it says holds for us.
            return self._last_worked


def _syncfs(directory: Path) -> bool:
    if _SYNCFS is None:
        return False
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        if _SYNCFS(descriptor) == 0:
            return True
        log.warning("syncfs failed (errno %d): syncing file by file", ctypes.get_errno())
        return False
    finally:
        os.close(descriptor)


#: One group per file system (its device): a sync of one says nothing about another.
_GROUPS: dict[int, GroupSync] = {}
_GROUPS_LOCK = threading.Lock()


def _group_of(directory: Path) -> GroupSync:
    device = os.stat(directory).st_dev
    with _GROUPS_LOCK:
        return _GROUPS.setdefault(device, GroupSync())


def sync_tree(directory: Path, paths: list[Path]) -> None:
    """Make `paths` (files and folders, all under `directory`) durable."""
    if _group_of(directory).sync(directory):
        return
    for path in paths:
        _fsync(path)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FileSourceStore:
    def __init__(self, data_dir: Path, work: WorkQueue | None = None) -> None:
        # Absolute: the state folder becomes a bind mount, and Docker takes a relative
        # source for the name of a volume.
        self.root = data_dir.absolute() / "programs"
        self._work = work or WorkQueue("hershy-sources", SOURCE_WORKERS, SOURCE_BACKLOG)

    def program_dir(self, program_id: str) -> Path:
        if not PROGRAM_ID_PATTERN.fullmatch(program_id):
            raise ValueError(f"not a program id: {program_id!r}")
        return self.root / program_id

    def source_dir(self, program_id: str) -> Path:
        return self.program_dir(program_id) / "src"

    async def save(self, program_id: str, source: ProgramSource) -> None:
        await self._work.run(self._save, program_id, source)

    async def load(self, program_id: str) -> ProgramSource:
        return await self._work.run(self._load, program_id)

    async def remove(self, program_id: str) -> None:
        await self._work.run(shutil.rmtree, self.program_dir(program_id), True)

    def _save(self, program_id: str, source: ProgramSource) -> None:
        src = self.source_dir(program_id)
        src.mkdir(parents=True, exist_ok=False)
        written = []
        made: set[Path] = {src}
        for relative, content in source.all_files().items():
            path = src / relative
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                folder = path.parent
                while folder not in made:  # each new folder's entry must be durable too
                    made.add(folder)
                    folder = folder.parent
            path.write_bytes(content)
            written.append(path)
        # Every file durable first; the marker last, and durable itself. Both syncs are
        # shared with the other saves under way (each waits for one begun after it wrote).
        sync_tree(src, [*written, *made])
        marker = self.program_dir(program_id) / COMPLETE_MARKER
        marker.touch()
        if not _group_of(marker.parent).sync(marker.parent):
            _fsync(marker)
            _fsync(marker.parent)

    def _load(self, program_id: str) -> ProgramSource:
        src = self.source_dir(program_id)
        if not (self.program_dir(program_id) / COMPLETE_MARKER).exists():
            raise NotFound(f"the source of program {program_id} is not stored")
        files = {
            path.relative_to(src).as_posix(): path.read_bytes()
            for path in sorted(src.rglob("*"))
            if path.is_file()
        }
        dockerfile = files.pop(DOCKERFILE_PATH)
        return ProgramSource(dockerfile, files)


class MemorySourceStore:
    """Keeps sources in memory: for tests and benchmarks."""

    def __init__(self) -> None:
        self.sources: dict[str, ProgramSource] = {}

    async def save(self, program_id: str, source: ProgramSource) -> None:
        self.sources[program_id] = source

    async def load(self, program_id: str) -> ProgramSource:
        try:
            return self.sources[program_id]
        except KeyError:
            raise NotFound(f"the source of program {program_id} is not stored") from None

    async def remove(self, program_id: str) -> None:
        self.sources.pop(program_id, None)
