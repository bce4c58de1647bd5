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
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from hershy.domain.errors import NotFound
from hershy.domain.validation import DOCKERFILE_PATH, PROGRAM_ID_PATTERN, ProgramSource, build_id
from hershy.service.work_queue import WorkQueue

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
#: Where the sources of later revisions go: `programs/<id>/builds/<build_id>/src/`
#: (the Create source stays in `programs/<id>/src/`).
BUILDS_DIR = "builds"
BUILD_ID_PATTERN = re.compile(r"b-[0-9a-f]{24}")
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

    # --- the sources of revisions, by build ----------------------------------------

    def build_dir(self, program_id: str, build: str) -> Path:
        if not BUILD_ID_PATTERN.fullmatch(build):
            raise ValueError(f"not a build id: {build!r}")
        return self.program_dir(program_id) / BUILDS_DIR / build

    async def save_build(self, program_id: str, build: str, source: ProgramSource) -> bool:
        """Keep a revision's source under its build id; False if it was kept already."""
        return await self._work.run(self._save_build, program_id, build, source)

    async def load_build(self, program_id: str, build: str) -> ProgramSource:
        """The source of one build of the program (the Create source or a later one)."""
        return await self._work.run(self._load_build, program_id, build)

    async def remove_build(self, program_id: str, build: str) -> None:
        await self._work.run(shutil.rmtree, self.build_dir(program_id, build), True)

    async def prune_builds(self, program_id: str, keep: frozenset[str]) -> None:
        """Remove the sources of the program's builds not in `keep`."""
        await self._work.run(self._prune_builds, program_id, keep)

    def _save_build(self, program_id: str, build: str, source: ProgramSource) -> bool:
        if self._holds_build(program_id, build):
            return False
        folder = self.build_dir(program_id, build)
        shutil.rmtree(folder, ignore_errors=True)  # a save cut off half-way
        self._write(folder, source)
        return True

    def _holds_build(self, program_id: str, build: str) -> bool:
        if (self.build_dir(program_id, build) / COMPLETE_MARKER).exists():
            return True
        try:
            return build_id(self._load(program_id)) == build
        except NotFound:
            return False

    def _load_build(self, program_id: str, build: str) -> ProgramSource:
        folder = self.build_dir(program_id, build)
        if (folder / COMPLETE_MARKER).exists():
            return _read(folder)
        # The Create source, if it is that build (checked: never another build's files).
        try:
            source = self._load(program_id)
        except NotFound:
            source = None
        if source is None or build_id(source) != build:
            raise NotFound(f"the source of build {build} of program {program_id} is not stored")
        return source

    def _prune_builds(self, program_id: str, keep: frozenset[str]) -> None:
        builds = self.program_dir(program_id) / BUILDS_DIR
        for folder in builds.iterdir() if builds.is_dir() else ():
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)
        try:
            create_source = build_id(self._load(program_id))
        except NotFound:
            return
        if create_source not in keep:
            # Marker first: a source without its marker is never read.
            (self.program_dir(program_id) / COMPLETE_MARKER).unlink(missing_ok=True)
            shutil.rmtree(self.source_dir(program_id), ignore_errors=True)

    def _save(self, program_id: str, source: ProgramSource) -> None:
        self._write(self.program_dir(program_id), source)

    def _write(self, home: Path, source: ProgramSource) -> None:
        """`source` in `home/src/`, then `home/.complete` once every file is durable."""
        src = home / "src"
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
        marker = home / COMPLETE_MARKER
        marker.touch()
        if not _group_of(marker.parent).sync(marker.parent):
            _fsync(marker)
            _fsync(marker.parent)

    def _load(self, program_id: str) -> ProgramSource:
        if not (self.program_dir(program_id) / COMPLETE_MARKER).exists():
            raise NotFound(f"the source of program {program_id} is not stored")
        return _read(self.program_dir(program_id))


def _read(folder: Path) -> ProgramSource:
    src = folder / "src"
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
        #: Later revisions' sources, by (program, build).
        self.builds: dict[tuple[str, str], ProgramSource] = {}

    async def save(self, program_id: str, source: ProgramSource) -> None:
        self.sources[program_id] = source

    async def load(self, program_id: str) -> ProgramSource:
        try:
            return self.sources[program_id]
        except KeyError:
            raise NotFound(f"the source of program {program_id} is not stored") from None

    async def remove(self, program_id: str) -> None:
        self.sources.pop(program_id, None)
        for key in [key for key in self.builds if key[0] == program_id]:
            del self.builds[key]

    async def save_build(self, program_id: str, build: str, source: ProgramSource) -> bool:
        if (program_id, build) in self.builds or (
            program_id in self.sources and build_id(self.sources[program_id]) == build
        ):
            return False
        self.builds[program_id, build] = source
        return True

    async def load_build(self, program_id: str, build: str) -> ProgramSource:
        if (program_id, build) in self.builds:
            return self.builds[program_id, build]
        source = self.sources.get(program_id)
        if source is None or build_id(source) != build:
            raise NotFound(f"the source of build {build} of program {program_id} is not stored")
        return source

    async def remove_build(self, program_id: str, build: str) -> None:
        self.builds.pop((program_id, build), None)

    async def prune_builds(self, program_id: str, keep: frozenset[str]) -> None:
        for key in [key for key in self.builds if key[0] == program_id and key[1] not in keep]:
            del self.builds[key]
        source = self.sources.get(program_id)
        if source is not None and build_id(source) not in keep:
            del self.sources[program_id]
