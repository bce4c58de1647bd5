"""Programs' secrets as files in a memory-backed folder, bound read-only at /run/secrets.

A program's secrets are written, each to a file of mode 0400, into a tmpfs
the Host mounts for it (`/run/hershy/<host id>/<program id>`, outside the data
dir: memory, never a disk), right before its container is created, and the
folder is bound read-only at `/run/secrets`. The files are the program's own:
root's, or, when the image runs as a numeric `USER` (`1000`, `1000:1000`),
that uid's. gVisor reads the files through
its gofer and keeps what it reads in the sandbox's memory. (Docker's own
`tmpfs` mounts would live inside the sandbox, but nothing can write into one
from outside before the program starts.) When no container of the program
runs any more (a stop, a crash's clean-up, a delete) the tmpfs is unmounted and
its contents are gone. A program without secrets gets no mount at all.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

from hershy.adapters.docker.state_volumes import _run, mounted_fs_type
from hershy.domain.config import MAX_SECRETS_TOTAL_BYTES

#: The tmpfs holds at most this much: every secret at its largest, and room for its inodes.
TMPFS_BYTES = 2 * MAX_SECRETS_TOTAL_BYTES
MOUNT_OPTIONS = f"size={TMPFS_BYTES},mode=0700,nosuid,nodev,noexec"
DEFAULT_ROOT = Path("/run/hershy")


class SecretFiles:
    def __init__(self, root: Path) -> None:
        """`root`: this Host's folder of secrets mounts (e.g. `/run/hershy/<host id>`)."""
        self.root = root

    def folder(self, program_id: str) -> Path:
        return self.root / program_id

    async def attach(
        self,
        program_id: str,
        values: Mapping[str, bytes],
        owner: tuple[int, int] | None = None,
    ) -> Path | None:
        """The folder to bind at /run/secrets holding exactly `values`; None if there are none.

        `owner`: the (uid, gid) the program runs as, when not root: its files are its own.
        """
        if not values:
            await self.detach(program_id)
            return None
        return await asyncio.to_thread(self._attach, program_id, dict(values), owner)

    async def detach(self, program_id: str) -> None:
        await asyncio.to_thread(self._detach, program_id)

    def _attach(
        self, program_id: str, values: dict[str, bytes], owner: tuple[int, int] | None
    ) -> Path:
        folder = self.folder(program_id)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.mkdir(exist_ok=True, mode=0o700)
        if mounted_fs_type(folder) != "tmpfs":
            _run("mount", "-t", "tmpfs", "-o", MOUNT_OPTIONS, "tmpfs", str(folder))
        if mounted_fs_type(folder) != "tmpfs":  # never write a value where a disk might be
            raise OSError(f"no tmpfs could be mounted at {folder} for the program's secrets")
        for old in folder.iterdir():
            if old.name not in values:
                old.unlink()
        for name, value in values.items():
            partial = folder / f".{name}.partial"
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
            with os.fdopen(descriptor, "wb") as file:
                file.write(value)
                if owner is not None:
                    os.fchown(file.fileno(), *owner)
            os.replace(partial, folder / name)
        # The folder is the program's to list (0500), nobody else's on the Host but root.
        if owner is not None:
            os.chown(folder, *owner)
        os.chmod(folder, 0o500)
        return folder

    def _detach(self, program_id: str) -> None:
        folder = self.folder(program_id)
        while mounted_fs_type(folder) == "tmpfs":
            _run("umount", str(folder))
        if folder.exists():
            for leftover in folder.iterdir():  # only ever a tmpfs's: nothing should be here
                leftover.unlink()
            folder.rmdir()
