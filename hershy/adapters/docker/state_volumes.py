"""Each program's `/state` as a file system of its own, so its size is a kernel-enforced quota.

`DATA_DIR/programs/<id>/state.img` is a sparse file holding an ext4 file
system of the program's `resources.state_bytes`; it is loop-mounted
(`nosuid,nodev,noexec`) at `DATA_DIR/programs/<id>/state`, the folder Docker
binds at `/state`. Writing past the size fails with ENOSPC inside the program
(under gVisor too: its gofer writes to the host file system, which refuses),
and the Host's disk can lose at most that much: the image only grows as it is
written.

The mount is the Host's, not the container's: it is made before the
container is created, outlives a Host restart (a running container adopted
keeps writing to it), is made again at the next start after a machine reboot,
and is removed with the image on Delete. `mount -o loop` sets the loop
device's autoclear flag, so unmounting frees it; a loop device left without a
mount is detached at removal too, so none leaks.

The Docker runtime is the only user (`StateVolumes`, the port below); the fake
runtime has no containers and so no volumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Protocol

from hershy.domain.validation import PROGRAM_ID_PATTERN

log = logging.getLogger(__name__)

IMAGE_NAME = "state.img"
MOUNT_NAME = "state"
FS_TYPE = "ext4"
MOUNT_OPTIONS = "nosuid,nodev,noexec"
#: A program's container may still be going away when Delete unmounts: retry this long.
UNMOUNT_PATIENCE_SECONDS = 5.0
COMMAND_TIMEOUT_SECONDS = 60.0


class VolumeError(Exception):
    """A state volume cannot be made, mounted or removed; the message says why."""


class StateVolumes(Protocol):
    """The port the Docker runtime uses for programs' `/state` folders."""

    async def attach(self, program_id: str, size_bytes: int) -> Path:
        """Make sure the program's volume exists and is mounted; returns the folder to bind."""
        ...

    async def remove(self, program_id: str) -> None:
        """Unmount the program's volume and delete it with its data (Delete)."""
        ...

    async def programs(self) -> list[str]:
        """The programs that have a volume (mounted or not)."""
        ...


def _run(*command: str) -> str:
    """Run a system tool; VolumeError with its message when it fails."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, check=False
        )
    except FileNotFoundError:
        raise VolumeError(f"{command[0]} is not installed (apt-get install e2fsprogs)") from None
    except subprocess.TimeoutExpired:
        raise VolumeError(f"{command[0]} took longer than {COMMAND_TIMEOUT_SECONDS:g} s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        problem = lines[-1] if lines else f"exit status {done.returncode}"
        raise VolumeError(f"{' '.join(command[:2])} failed: {problem}")
    return done.stdout


def mounted_fs_type(path: Path) -> str | None:
    """The file system type mounted at `path` (the topmost), None if nothing is."""
    target = str(path.absolute())
    found = None
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            # Spaces and the like are octal-escaped in /proc/mounts.
            if len(fields) >= 3 and _unescape(fields[1]) == target:
                found = fields[2]
    return found


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def loop_devices_of(image: Path) -> list[str]:
    """The loop devices backed by `image` (`losetup -j`)."""
    if not image.exists():
        return []
    output = _run("losetup", "--noheadings", "-O", "NAME", "-j", str(image))
    return [line.strip() for line in output.splitlines() if line.strip()]


def make_image(image: Path, size_bytes: int, content: Path | None = None) -> None:
    """A sparse file holding a fresh ext4 of `size_bytes`, with `content`'s files if given.

    Written under a temporary name and renamed, so a half-made image is never
    taken for a whole one.
    """
    partial = image.with_name(image.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    with open(partial, "wb") as file:
        file.truncate(size_bytes)
    # -m 0: no blocks reserved for root, the program may use all of it; no
    # lazy init, so nothing keeps writing to the image after the mount.
    command = ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
    if content is not None:
        command += ["-d", str(content)]
    try:
        _run(*command, str(partial))
        with open(partial, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(partial, image)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise


def mount_image(image: Path, target: Path) -> None:
    """Loop-mount `image` at `target`; the same loop device if one backs it already.

    Two loop devices on one image would be two file systems writing one disk;
    mounting the device that exists shares its file system instead.
    """
    devices = loop_devices_of(image)
    if devices:
        _run("mount", "-t", FS_TYPE, "-o", MOUNT_OPTIONS, devices[0], str(target))
    else:
        _run("mount", "-t", FS_TYPE, "-o", f"loop,{MOUNT_OPTIONS}", str(image), str(target))


def unmount(target: Path, patience: float = UNMOUNT_PATIENCE_SECONDS) -> None:
    """Unmount everything at `target` (a mount may be stacked); retry while it is busy."""
    deadline = time.monotonic() + patience
    while mounted_fs_type(target) is not None:
        try:
            _run("umount", str(target))
        except VolumeError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


class LoopStateVolumes:
    """State volumes as loop-mounted ext4 images under `root` (`DATA_DIR/programs`)."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def program_dir(self, program_id: str) -> Path:
        if not PROGRAM_ID_PATTERN.fullmatch(program_id):
            raise ValueError(f"not a program id: {program_id!r}")
        return self.root / program_id

    def image(self, program_id: str) -> Path:
        return self.program_dir(program_id) / IMAGE_NAME

    def mount_point(self, program_id: str) -> Path:
        return self.program_dir(program_id) / MOUNT_NAME

    async def attach(self, program_id: str, size_bytes: int) -> Path:
        return await asyncio.to_thread(self._attach, program_id, size_bytes)

    async def remove(self, program_id: str) -> None:
        await asyncio.to_thread(self._remove, program_id)

    async def programs(self) -> list[str]:
        return await asyncio.to_thread(self._programs)

    def _programs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            folder.name
            for folder in self.root.iterdir()
            if PROGRAM_ID_PATTERN.fullmatch(folder.name)
            and ((folder / IMAGE_NAME).exists() or mounted_fs_type(folder / MOUNT_NAME) is not None)
        )

    def _attach(self, program_id: str, size_bytes: int) -> Path:
        image, target = self.image(program_id), self.mount_point(program_id)
        target.mkdir(parents=True, exist_ok=True)
        mounted = mounted_fs_type(target)
        if mounted == FS_TYPE and image.exists():
            return target
        if mounted is not None:
            raise VolumeError(
                f"{target} has a {mounted} file system mounted that is not the program's volume"
            )
        fresh = not image.exists()
        if fresh:
            self._make(program_id, image, target, size_bytes)
        mount_image(image, target)
        if mounted_fs_type(target) != FS_TYPE:  # never bind the bare folder: no quota there
            raise VolumeError(f"{image} did not end up mounted at {target}")
        if fresh:
            with contextlib.suppress(OSError):  # mkfs's, not the program's
                (target / "lost+found").rmdir()
        log.info("program %s: /state mounted (%d MiB)", program_id, size_bytes // 1024**2)
        return target

    def _make(self, program_id: str, image: Path, target: Path, size_bytes: int) -> None:
        # A program from before volumes has a plain folder: its files move into the volume.
        legacy = any(target.iterdir())
        try:
            make_image(image, size_bytes, content=target if legacy else None)
        except VolumeError as error:
            if legacy:
                raise VolumeError(
                    f"the files already in {target} do not fit in a {size_bytes}-byte "
                    f"volume ({error})"
                ) from None
            raise
        if legacy:
            log.info("program %s: moved its existing /state files into its volume", program_id)
            for child in list(target.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def _remove(self, program_id: str) -> None:
        image, target = self.image(program_id), self.mount_point(program_id)
        unmount(target)
        for device in loop_devices_of(image):
            with contextlib.suppress(VolumeError):  # autoclear may have freed it meanwhile
                _run("losetup", "-d", device)
        with contextlib.suppress(FileNotFoundError):
            image.unlink()
        with contextlib.suppress(FileNotFoundError):
            image.with_name(image.name + ".partial").unlink()


def probe(directory: Path) -> None:
    """Make, mount, fill past its size, unmount and remove a small volume in `directory`.

    `hershy doctor` calls it: VolumeError says what this machine lacks.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".volume-probe-", dir=directory) as scratch:
        image, target = Path(scratch) / IMAGE_NAME, Path(scratch) / MOUNT_NAME
        target.mkdir()
        make_image(image, 16 * 1024**2)
        mount_image(image, target)
        try:
            if mounted_fs_type(target) != FS_TYPE:
                raise VolumeError(f"mount reported success but {target} is not mounted")
            _write_past(target / "fill", 17 * 1024**2)
        finally:
            unmount(target)
            for device in loop_devices_of(image):
                with contextlib.suppress(VolumeError):
                    _run("losetup", "-d", device)


def _write_past(path: Path, size_bytes: int) -> None:
    chunk = b"\0" * 1024**2
    try:
        with open(path, "wb") as file:
            for _ in range(size_bytes // len(chunk)):
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        if error.errno == errno.ENOSPC:  # the quota held
            return
        raise VolumeError(f"writing to a test volume failed: {error}") from None
    raise VolumeError("a 16 MiB test volume took 17 MiB: the size is not enforced")
