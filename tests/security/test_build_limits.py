"""Builds are bounded like programs, on the real engine and runsc: memory, pids, what a build
writes, Docker's free disk. A build over a limit ends in ERROR with a clear reason and leaves
nothing behind: no image, no step container, none of the layers it made.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import docker
import pytest
from docker.errors import ImageNotFound, NotFound

from hershy.adapters.docker.build import LAYER_LINE, RUN_STEP_PREFIX, BuildLimits
from hershy.domain.model import LogStream, Program, State
from tests.integration.conftest import BASE_IMAGE, leftovers
from tests.security.conftest import ATTACKER, SecureHost, open_secure_host

pytestmark = pytest.mark.docker

MiB = 1024**2


async def assert_left_nothing(host: SecureHost, program: Program) -> None:
    """No tagged image, no step container, no layer the failed build made."""
    log = await host.log(program.id, LogStream.BUILD)
    assert host.images_of_user(ATTACKER) == []
    with pytest.raises(ImageNotFound):
        host.docker.images.get(host.tag_of(program))
    steps = [
        line.removeprefix(RUN_STEP_PREFIX).strip()
        for line in log
        if line.startswith(RUN_STEP_PREFIX)
    ]
    assert steps, log
    for step in steps:
        with pytest.raises(NotFound):
            host.docker.containers.get(step)
    base = host.docker.images.get(BASE_IMAGE).id.removeprefix("sha256:")[:12]
    for line in log:
        if (layer := LAYER_LINE.match(line)) and layer.group(1) != base:
            with pytest.raises(ImageNotFound):
                host.docker.images.get(layer.group(1))
    assert leftovers(host.docker, program.id) == []


async def failed_build(host: SecureHost, run: str) -> Program:
    """Build `RUN {run}` (with a unique marker, so no cache applies); it must end in ERROR."""
    nonce = secrets.token_hex(6)
    program = await host.stub_program(
        ATTACKER, f"FROM {BASE_IMAGE}\nRUN echo {nonce} > /nonce\nRUN {run}\n"
    )
    failed = await host.started(program, State.ERROR, within=240)
    assert failed.state is State.ERROR, failed
    return failed


async def test_a_run_step_over_its_memory_fails_and_one_under_it_builds(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    limits = BuildLimits(memory_bytes=256 * MiB, total_memory_bytes=512 * MiB)
    async with open_secure_host(
        tmp_path / "data", docker_client, stub_binary, limits=limits
    ) as host:
        # gVisor's /tmp is memory: 400 MB of it cannot fit in 256 MiB (the step is killed;
        # with 1 GiB it builds). Not /dev/shm: Docker caps that at 64 MiB anyway.
        failed = await failed_build(host, "head -c 400000000 /dev/zero > /tmp/fill")
        assert "returned a non-zero code: 137" in (failed.error or ""), failed.error
        await assert_left_nothing(host, failed)
        fits = await host.stub_program(
            ATTACKER,
            f"FROM {BASE_IMAGE}\nRUN head -c 50000000 /dev/zero > /tmp/fill "
            f"&& echo {secrets.token_hex(6)}\n",
        )
        built = await host.built(fits)
        assert built.image_id, built.error


async def test_a_run_step_over_its_pids_fails(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    limits = BuildLimits(pids=256, total_pids=1024)
    async with open_secure_host(
        tmp_path / "data", docker_client, stub_binary, limits=limits
    ) as host:
        failed = await failed_build(
            host, "i=0; while [ $i -lt 1100 ]; do sleep 60 & i=$((i+1)); done; wait"
        )
        assert "returned a non-zero code" in (failed.error or "")
        await assert_left_nothing(host, failed)
        # Under the limit, RUN steps work (gVisor's own threads fit).
        fits = await host.stub_program(
            ATTACKER,
            f"FROM {BASE_IMAGE}\nRUN i=0; while [ $i -lt 20 ]; do sleep 1 & i=$((i+1)); done; "
            f"wait; echo {secrets.token_hex(6)}\n",
        )
        built = await host.built(fits)
        assert built.image_id, built.error


async def test_a_build_writing_over_its_cap_is_cancelled_and_leaves_nothing(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    limits = BuildLimits(max_image_bytes=64 * MiB, watch_interval=0.2)
    async with open_secure_host(
        tmp_path / "data", docker_client, stub_binary, limits=limits
    ) as host:
        failed = await failed_build(host, "dd if=/dev/zero of=/big bs=1M count=1500 && sleep 30")
        assert "more than its cap of 64 MiB" in (failed.error or ""), failed.error
        assert "nothing it made is kept" in (failed.error or "")
        await assert_left_nothing(host, failed)


async def test_an_image_over_the_cap_made_of_small_steps_is_refused(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    limits = BuildLimits(max_image_bytes=64 * MiB, watch_interval=5)
    async with open_secure_host(
        tmp_path / "data", docker_client, stub_binary, limits=limits
    ) as host:
        # Each step writes 30 MB (under the cap); the image they make is over it.
        steps = "".join(f"RUN head -c 30000000 /dev/urandom > /f{i}\n" for i in range(3))
        program = await host.stub_program(
            ATTACKER, f"FROM {BASE_IMAGE}\nRUN echo {secrets.token_hex(6)}\n{steps}"
        )
        failed = await host.started(program, State.ERROR, within=240)
        assert failed.state is State.ERROR
        reason = r"more than its cap of 64 MiB \((an image it made|the image) is"
        assert re.search(reason, failed.error or ""), failed.error
        await assert_left_nothing(host, failed)


async def test_no_build_while_dockers_disk_is_below_the_threshold(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    limits = BuildLimits(min_free_disk_bytes=1024**5)  # a petabyte free: never
    async with open_secure_host(
        tmp_path / "data", docker_client, stub_binary, limits=limits
    ) as host:
        program = await host.stub_program(ATTACKER, f"FROM {BASE_IMAGE}\nRUN true\n")
        failed = await host.started(program, State.ERROR)
        assert failed.state is State.ERROR
        assert "GiB free, less than the" in (failed.error or ""), failed.error
        assert "no builds until space is freed" in (failed.error or "")
        log = await host.log(program.id, LogStream.BUILD)
        assert not any(line.startswith("Step 1/") for line in log), "the build started"
        assert host.images_of_user(ATTACKER) == []
