"""A program's `/state` is a file system of its own size: writing past it fails inside.

On the real engine and runsc. The program is busybox: a shell script writes
far more than its quota into /state (dd reports ENOSPC on stderr), then
serves its WatcherAPI status with httpd, so it is READY and keeps running.
Checked: the error inside, the program still running, the Host's disk
holding at most the quota for it, data under the quota surviving a restart,
a `kill -9` of the Host (the running container adopted) and a machine
reboot (the mount gone, made again), and Delete leaving no mount, image file
or loop device.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import docker
import grpc
import pytest

from hershy.adapters.docker.state_volumes import (
    IMAGE_NAME,
    LoopStateVolumes,
    VolumeError,
    mounted_fs_type,
)
from hershy.domain.model import LogStream, Program, Resources, State
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.integration.conftest import BASE_IMAGE, Host, containers_of, eventually
from tests.integration.test_faults import clean_docker, host_process, state_of, until_state

pytestmark = pytest.mark.docker

__all__ = ["clean_docker"]

QUOTA = 32 * 1024**2
#: What the program tries to write: eight times its quota.
FILL_MIB = 256
DOCKERFILE = f"""FROM {BASE_IMAGE}
COPY fill.sh /fill.sh
COPY www /www
ENTRYPOINT ["/bin/sh", "/fill.sh"]
"""
FILL_SCRIPT = f"""
if [ -f /state/keep ]; then echo "kept: $(cat /state/keep)"; else
  echo "mark-$MARK" > /state/keep && sync && echo "wrote keep"; fi
dd if=/dev/zero of=/state/fill bs=1M count={FILL_MIB}
echo "dd exit $?"
sync
exec httpd -f -p 8080 -h /www
"""
FILES = {"fill.sh": FILL_SCRIPT.encode(), "www/watcher/status": b'{"state":"Ready"}\n'}


def allocated_bytes(folder: Path) -> int:
    """What the files under `folder` take on the Host's disk (sparse parts take nothing)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with_stat = os.lstat(os.path.join(root, name))
            total += with_stat.st_blocks * 512
    return total


def loop_devices_backing(image: Path) -> list[str]:
    """Every loop device whose backing file is `image` (deleted or not)."""
    listing = subprocess.run(
        ["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split()[0] for line in listing.splitlines() if str(image) in line]


async def lines(host: Host, program_id: str, stream: LogStream) -> list[str]:
    found = host.registry.logs(program_id, None, frozenset({stream}), False)
    return [line.text async for line in found]


async def output_of(host: Host, program_id: str, run: int) -> str:
    text = [
        line.text
        async for line in host.registry.logs(
            program_id, None, frozenset({LogStream.STDOUT, LogStream.STDERR}), False
        )
        if line.run == run
    ]
    return "\n".join(text)


async def filled(host: Host, program: Program) -> str:
    """The program's output once its dd finished."""
    text: str = await eventually(
        lambda: output_of(host, program.id, program.run),
        lambda text: "dd exit" in text,
        within=60,
        what=f"{program.id} run {program.run} reporting its dd",
    )
    return text


def assert_nothing_left(program_dir: Path) -> None:
    image = program_dir / IMAGE_NAME
    assert not program_dir.exists(), sorted(str(p) for p in program_dir.rglob("*"))
    assert mounted_fs_type(program_dir / "state") is None
    assert not loop_devices_backing(image)


async def test_writing_past_the_quota_fails_inside_and_nothing_else_is_touched(
    host: Host, docker_client: docker.DockerClient
) -> None:
    free_before = os.statvfs(host.data_dir).f_bavail * os.statvfs(host.data_dir).f_frsize
    program = await host.registry.create(
        "quota", DOCKERFILE, FILES, Resources(0, 0, 0, state_bytes=QUOTA)
    )
    host.created.append(program.id)
    assert program.resources.state_bytes == QUOTA
    await host.registry.start(program.id)
    program = await host.registry.wait(program.id, State.READY, 90)
    output = await filled(host, program)
    program_dir = host.program_dir(program.id)
    state = program_dir / "state"

    # ENOSPC inside the sandbox, and the program carries on (it serves, it runs).
    assert "No space left on device" in output, output
    assert "dd exit 1" in output, output
    assert "wrote keep" in output, output
    assert mounted_fs_type(state) == "ext4"
    async with host.http.get(f"http://{program.proxy_target}/watcher/status") as answer:
        assert answer.status == 200
        assert await answer.read() == FILES["www/watcher/status"]
    (container,) = containers_of(docker_client, program.id)
    assert container.status == "running"
    assert host.registry.get(program.id).state is State.READY

    # The Host's disk holds at most the quota for it: the image is sparse and full.
    assert allocated_bytes(program_dir / IMAGE_NAME) <= QUOTA
    assert (state / "fill").stat().st_size < QUOTA
    assert (state / "keep").read_text().startswith("mark-")
    # Other tests share the disk: only a drop as big as the write (8x the quota) would tell.
    free_after = os.statvfs(host.data_dir).f_bavail * os.statvfs(host.data_dir).f_frsize
    assert free_before - free_after < FILL_MIB * 1024**2 - 2 * QUOTA

    # A restart keeps what was written under the quota.
    await host.registry.restart(program.id)
    program = await host.registry.wait(program.id, State.READY, 90)
    again = await filled(host, program)
    assert "kept: mark-" in again, again
    assert "No space left on device" in again, again

    await host.delete(program.id)
    assert_nothing_left(program_dir)


async def test_quota_is_refused_outside_the_hosts_bounds(host: Host) -> None:
    from hershy.domain.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=r"resources\.state_bytes"):
        await host.registry.create("quota", DOCKERFILE, FILES, Resources(0, 0, 0, 1024))
    with pytest.raises(InvalidArgument, match=r"resources\.state_bytes"):
        await host.registry.create("quota", DOCKERFILE, FILES, Resources(0, 0, 0, 2**50))


async def test_the_volume_survives_a_host_kill_and_a_reboot_and_delete_removes_it(
    tmp_path: Path, docker_client: docker.DockerClient, clean_docker: list[str]
) -> None:
    with host_process(tmp_path) as hershy:
        async with grpc.aio.insecure_channel(hershy.address) as channel:
            stub = pb_grpc.ProgramServiceStub(channel)
            program = await stub.CreateProgram(
                pb.CreateProgramRequest(
                    user_id="quota",
                    dockerfile=DOCKERFILE,
                    src_files=FILES,
                    resources=pb.Resources(state_bytes=QUOTA),
                )
            )
            clean_docker.append(program.id)
            await stub.StartProgram(pb.StartProgramRequest(name=program.name))
        ready = await until_state(hershy.address, program.name, pb.STATE_READY, 90)
        program_dir = tmp_path / "data" / "programs" / program.id
        state = program_dir / "state"
        await eventually(
            lambda: (state / "keep").exists(), bool, within=30, what="the program's keep file"
        )
        mark = (state / "keep").read_text()

        # kill -9: the mount stays, the running container is adopted and keeps its volume.
        hershy.kill9()
        assert mounted_fs_type(state) == "ext4"
        hershy.start()
        adopted = await until_state(hershy.address, program.name, pb.STATE_READY, 30)
        assert adopted.container_id == ready.container_id
        assert adopted.restart_count == ready.restart_count
        assert (state / "keep").read_text() == mark

        # A reboot: the Host, the container and the mount all gone. The next start mounts
        # the same image again, with its data.
        hershy.kill9()
        for container in containers_of(docker_client, program.id):
            container.remove(force=True)
        await asyncio.to_thread(subprocess.run, ["umount", str(state)], check=True)
        assert mounted_fs_type(state) is None
        hershy.start()
        rebooted: pb.Program = await eventually(
            lambda: state_of(hershy.address, program.name),
            lambda p: p.state == pb.STATE_READY and p.container_id != ready.container_id,
            within=90,
            what="the program running again after the reboot",
        )
        assert rebooted.restart_count > ready.restart_count
        assert mounted_fs_type(state) == "ext4"
        assert (state / "keep").read_text() == mark
        assert len(loop_devices_backing(program_dir / IMAGE_NAME)) == 1

        async with grpc.aio.insecure_channel(hershy.address) as channel:
            stub = pb_grpc.ProgramServiceStub(channel)
            await stub.DeleteProgram(pb.DeleteProgramRequest(name=program.name))
        await eventually(
            lambda: program_dir.exists(), lambda exists: not exists, within=60, what="deleted"
        )
        assert_nothing_left(program_dir)
        assert not containers_of(docker_client, program.id)


# --- the adapter alone (root, loop devices, mkfs.ext4; no containers) -----------------------


async def test_a_plain_state_folder_moves_into_its_volume(tmp_path: Path) -> None:
    """A program from before volumes keeps its files; nothing is left under the mount."""
    volumes = LoopStateVolumes(tmp_path)
    state = tmp_path / "prog-old" / "state"
    (state / "nested" / "deeper").mkdir(parents=True)
    (state / "count").write_text("41")
    (state / "nested" / "deeper" / "blob").write_bytes(os.urandom(100_000))
    blob = (state / "nested" / "deeper" / "blob").read_bytes()
    try:
        assert await volumes.attach("prog-old", QUOTA) == state
        assert mounted_fs_type(state) == "ext4"
        assert (state / "count").read_text() == "41"
        assert (state / "nested" / "deeper" / "blob").read_bytes() == blob
        assert sorted(p.name for p in state.iterdir()) == ["count", "nested"]  # no lost+found
        # Attaching again (a second start) mounts nothing more.
        await volumes.attach("prog-old", QUOTA)
        assert len(loop_devices_backing(volumes.image("prog-old"))) == 1
    finally:
        await volumes.remove("prog-old")
    # Under the mount point nothing stayed behind: the files live in the (removed) volume.
    assert list(state.iterdir()) == []
    assert not volumes.image("prog-old").exists()
    assert not loop_devices_backing(volumes.image("prog-old"))


async def test_a_folder_too_big_for_its_volume_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    volumes = LoopStateVolumes(tmp_path)
    state = tmp_path / "prog-big" / "state"
    state.mkdir(parents=True)
    (state / "big").write_bytes(b"x" * (QUOTA + 1024**2))
    with pytest.raises(VolumeError, match="do not fit"):
        await volumes.attach("prog-big", QUOTA)
    assert (state / "big").stat().st_size == QUOTA + 1024**2
    assert mounted_fs_type(state) is None
    assert not volumes.image("prog-big").exists()
    assert not (tmp_path / "prog-big" / f"{IMAGE_NAME}.partial").exists()


async def test_something_else_mounted_at_state_is_never_bound(tmp_path: Path) -> None:
    """A tmpfs (or anything not the program's ext4) at the mount point: refused, not used."""
    volumes = LoopStateVolumes(tmp_path)
    state = tmp_path / "prog-odd" / "state"
    state.mkdir(parents=True)
    await asyncio.to_thread(
        subprocess.run, ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True
    )
    try:
        with pytest.raises(VolumeError, match="tmpfs"):
            await volumes.attach("prog-odd", QUOTA)
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", str(state)], check=True)
