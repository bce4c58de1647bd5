"""Programs' build inputs on disk: `DATA_DIR/programs/<id>/src/`.

Each program's folder is written completely before the Create call is
answered (files first, then a marker), so a half-written source is never
taken for a whole one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from hershy.domain.errors import NotFound
from hershy.domain.validation import DOCKERFILE_PATH, PROGRAM_ID_PATTERN, ProgramSource

COMPLETE_MARKER = ".complete"


class FileSourceStore:
    def __init__(self, data_dir: Path) -> None:
        # Absolute: the state folder becomes a bind mount, and Docker takes a relative
        # source for the name of a volume.
        self.root = data_dir.absolute() / "programs"

    def program_dir(self, program_id: str) -> Path:
        if not PROGRAM_ID_PATTERN.fullmatch(program_id):
            raise ValueError(f"not a program id: {program_id!r}")
        return self.root / program_id

    def source_dir(self, program_id: str) -> Path:
        return self.program_dir(program_id) / "src"

    async def save(self, program_id: str, source: ProgramSource) -> None:
        await asyncio.to_thread(self._save, program_id, source)

    async def load(self, program_id: str) -> ProgramSource:
        return await asyncio.to_thread(self._load, program_id)

    async def remove(self, program_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.program_dir(program_id), True)

    def _save(self, program_id: str, source: ProgramSource) -> None:
        src = self.source_dir(program_id)
        src.mkdir(parents=True, exist_ok=False)
        for relative, content in source.all_files().items():
            path = src / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
        (self.program_dir(program_id) / COMPLETE_MARKER).touch()

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
