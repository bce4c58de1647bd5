"""Issue 10, the build part, attacked on the real engine and runsc.

Each attack class has one test that tries every spelling of it against a
victim tenant's READY program, and checks the refusal (INVALID_ARGUMENT on
`dockerfile` naming the line, at Create: no build ever starts) and that
nothing leaked: the victim's marker bytes are in no message, no log, no image
of the attacker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import grpc
import pytest
from aiohttp import web
from docker.errors import ImageNotFound

from hershy.adapters.docker.build import BaseImageRefused
from hershy.adapters.docker.compose import LABEL_MANAGED
from hershy.domain.model import LogStream, Program, State
from hershy_client.aio import AsyncClient
from hershy_client.errors import HershyError
from tests.integration.conftest import BASE_IMAGE, eventually
from tests.security.conftest import (
    ATTACKER,
    VICTIM,
    SecureHost,
    Victim,
    everything_the_attacker_sees,
    open_secure_host,
)

pytestmark = pytest.mark.docker


def assert_names_the_line(message: str, line: int, text: str, victim: Victim) -> None:
    assert message.startswith(f"dockerfile: line {line}: "), message
    assert text[:40] in message, message
    assert victim.marker not in message


async def assert_nothing_leaked(host: SecureHost, victim: Victim) -> None:
    assert victim.marker not in await everything_the_attacker_sees(host)
    assert host.images_of_user(ATTACKER) == []


async def test_from_another_tenants_image_is_refused_in_every_spelling(
    secure_host: SecureHost, victim: Victim
) -> None:
    full = victim.image_id  # sha256:<64 hex>
    hex_id = full.removeprefix("sha256:")
    spellings = {
        "tag": (f"FROM {victim.tag}\n", 1),
        "full id": (f"FROM {hex_id}\n", 1),
        "sha256 id": (f"FROM {full}\n", 1),
        "short id": (f"FROM {hex_id[:12]}\n", 1),
        "4-hex prefix": (f"FROM {hex_id[:4]}\n", 1),
        "digest": (f"FROM hershy/{victim.program.id}@{full}\n", 1),
        "ARG-substituted": (f"ARG BASE={victim.tag}\nFROM $BASE\n", 2),
        "ARG-substituted id": (f"ARG ID={hex_id[:4]}\nFROM ${{ID}}\n", 2),
        "stage aliasing": (f"FROM {victim.tag} AS y\nFROM y\n", 1),
        "after a continuation": (f"FROM scratch\nFROM \\\n  {victim.tag}\n", 2),
        "repository only": (f"FROM hershy/{victim.program.id}\n", 1),
    }
    for name, (head, line) in spellings.items():
        message = await secure_host.refused(
            ATTACKER, head + "RUN cat /secret.txt\n" + 'CMD ["cat", "/secret.txt"]\n'
        )
        text = head.splitlines()[line - 1].rstrip(" \\")
        assert_names_the_line(message, line, text, victim)
        assert "FROM may name only" in message or "cannot decide" in message, (name, message)
    await assert_nothing_leaked(secure_host, victim)


async def test_the_refusal_is_invalid_argument_over_grpc(
    secure_host: SecureHost, victim: Victim
) -> None:
    async with AsyncClient(secure_host.server.address) as client:
        with pytest.raises(HershyError) as caught:
            await client.create(ATTACKER, f"FROM {victim.tag}\nRUN cat /secret.txt\n")
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "dockerfile"
    assert "line 1" in caught.value.message
    assert victim.tag[:30] in caught.value.message
    assert victim.marker not in str(caught.value)
    await assert_nothing_leaked(secure_host, victim)


@contextlib.asynccontextmanager
async def marker_server(marker: str) -> AsyncIterator[tuple[int, list[str]]]:
    """An HTTP server on the Host's loopback that serves the victim's marker; counts requests."""
    asked: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(text=marker)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, asked
    finally:
        await runner.cleanup()


async def test_add_fetches_nothing_remote_of_any_scheme(
    secure_host: SecureHost, victim: Victim
) -> None:
    async with marker_server(victim.marker) as (port, asked):
        where = f"127.0.0.1:{port}"
        sources = [
            f"ADD http://{where}/secret /s",
            f"ADD https://{where}/secret /s",
            f"ADD HTTP://{where}/secret /s",
            f"ADD git://{where}/repo.git /s",
            f"ADD https://{where}/repo.git#main /s",
            "ADD git@127.0.0.1:repo.git /s",
            "ADD github.com/hershy/secret /s",
            f'ADD ["http://{where}/secret", "/s"]',
            f"ADD --chown=1:1 http://{where}/secret /s",
            f"COPY http://{where}/secret /s",
        ]
        for line in sources:
            message = await secure_host.refused(ATTACKER, f"FROM scratch\n{line}\n")
            assert_names_the_line(message, 2, line, victim)
            assert "nothing remote" in message
        hidden = [
            (f"FROM scratch\nENV U=http://{where}/secret\nADD $U /s\n", 3),
            (f"ARG H={where}\nFROM scratch\nARG H\nADD http://${{H}}/secret /s\n", 4),
            (f"FROM scratch\nADD a \\\n  http://{where}/secret /s\n", 2),
        ]
        for dockerfile, number in hidden:
            message = await secure_host.refused(ATTACKER, dockerfile, {"a": b"a"})
            assert message.startswith(f"dockerfile: line {number}: "), message
    assert asked == [], "the Host's network was reached"
    await assert_nothing_leaked(secure_host, victim)


async def test_copy_from_an_image_is_refused(secure_host: SecureHost, victim: Victim) -> None:
    hex_id = victim.image_id.removeprefix("sha256:")
    for source in [victim.tag, victim.image_id, hex_id[:12], hex_id[:4], BASE_IMAGE]:
        line = f"COPY --from={source} /secret.txt /s"
        message = await secure_host.refused(ATTACKER, f"FROM scratch\n{line}\n")
        assert_names_the_line(message, 2, line, victim)
        assert "earlier stage" in message
    await assert_nothing_leaked(secure_host, victim)


async def test_onbuild_is_refused(secure_host: SecureHost, victim: Victim) -> None:
    for line in [
        "ONBUILD RUN cat /secret.txt",
        f"ONBUILD COPY --from={victim.tag} /secret.txt /s",
        "ONBUILD ADD http://127.0.0.1:9000/ /s",
    ]:
        message = await secure_host.refused(ATTACKER, f"FROM scratch\n{line}\n")
        assert_names_the_line(message, 2, line, victim)
        assert "ONBUILD is not allowed" in message
    await assert_nothing_leaked(secure_host, victim)


@pytest.fixture
def onbuild_image(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"hershy-sec-onbuild:{secrets.token_hex(4)}"
    context = io.BytesIO()
    dockerfile = f"FROM {BASE_IMAGE}\nONBUILD RUN echo triggered\n".encode()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=name, rm=True)
    yield name
    with contextlib.suppress(ImageNotFound):
        docker_client.images.remove(name, force=True)


async def test_a_base_image_with_onbuild_triggers_is_refused_at_start(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes, onbuild_image: str
) -> None:
    with pytest.raises(BaseImageRefused, match="ONBUILD"):
        async with open_secure_host(
            tmp_path / "data", docker_client, stub_binary, base_images=(BASE_IMAGE, onbuild_image)
        ):
            pass


async def test_a_missing_base_image_is_refused_at_start(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    with pytest.raises(BaseImageRefused, match="does not exist"):
        async with open_secure_host(
            tmp_path / "data", docker_client, stub_binary, base_images=("hershy-sec-none:nope",)
        ):
            pass


async def test_a_base_image_retagged_after_start_is_refused_before_the_build(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    """The allowlist is held by image id: a name that now points elsewhere builds nothing."""
    name = f"hershy-sec-base:{secrets.token_hex(4)}"
    docker_client.images.get(BASE_IMAGE).tag(name)
    try:
        async with open_secure_host(
            tmp_path / "data", docker_client, stub_binary, base_images=(BASE_IMAGE, name)
        ) as host:
            marker = f"VICTIM-SECRET-{secrets.token_hex(8)}"
            victim_program = await host.stub_program(
                VICTIM, f"FROM {BASE_IMAGE}\nCOPY s /s\n", {"s": marker.encode()}
            )
            victim_ready = await host.built(victim_program)
            attacker = await host.stub_program(ATTACKER, f"FROM {name}\nRUN cat /s\n")
            # Someone points the allowed name at the victim's image after the Host started.
            docker_client.images.get(host.tag_of(victim_ready)).tag(name)
            failed = await host.started(attacker, State.ERROR)
            assert failed.state is State.ERROR
            assert "now resolves to" in (failed.error or "")
            seen = "\n".join(await host.log(attacker.id)) + (failed.error or "")
            assert marker not in seen
            assert "Step 1/" not in seen, "the build started"
            assert host.images_of_user(ATTACKER) == []
    finally:
        with contextlib.suppress(ImageNotFound):
            docker_client.images.remove(name)


async def test_no_cache_is_shared_between_tenants_but_a_users_own_is_reused(
    secure_host: SecureHost,
) -> None:
    nonce = secrets.token_hex(8)
    head = f"FROM {BASE_IMAGE}\nRUN echo {nonce} > /nonce\n"
    first = await secure_host.built(await secure_host.stub_program(VICTIM, head))
    assert first.image_id, first.error
    first_log = await secure_host.log(first.id, LogStream.BUILD)
    assert not any("Using cache" in line for line in first_log)

    # Another tenant, the exact same Dockerfile and files: built afresh, no sign of the first.
    other = await secure_host.built(await secure_host.stub_program(ATTACKER, head))
    assert other.image_id, other.error
    other_log = await secure_host.log(other.id, LogStream.BUILD)
    assert not any("Using cache" in line for line in other_log), other_log

    # The first tenant again, a new program of the same inputs: its own layers are reused.
    again = await secure_host.built(await secure_host.stub_program(VICTIM, head))
    assert again.image_id, again.error
    again_log = await secure_host.log(again.id, LogStream.BUILD)
    assert sum("Using cache" in line for line in again_log) >= 2, again_log


async def test_a_users_programs_of_the_same_inputs_built_at_once_share_one_build_only(
    secure_host: SecureHost,
) -> None:
    head = f"FROM {BASE_IMAGE}\nRUN echo {secrets.token_hex(8)} > /nonce\n"
    programs = [await secure_host.stub_program(VICTIM, head) for _ in range(3)]
    other = await secure_host.stub_program(ATTACKER, head)
    built = await asyncio.gather(*(secure_host.built(p) for p in [*programs, other]))
    assert all(program.image_id for program in built), [p.error for p in built]
    mine, theirs = built[:3], built[3]
    # One build for the user's three programs (they waited for it, then tagged its image)...
    assert len({program.image_id for program in mine}) == 1
    logs = [await secure_host.log(program.id, LogStream.BUILD) for program in mine]
    assert sum(any(line.startswith("built ") for line in log) for log in logs) == 1, logs
    assert sum(any("another of your programs" in line for line in log) for log in logs) == 2
    # ... each under its own tag; the other tenant's is its own build, its own image.
    for program in mine:
        assert secure_host.docker.images.get(secure_host.tag_of(program)).id == mine[0].image_id
    assert theirs.image_id != mine[0].image_id
    other_log = await secure_host.log(theirs.id, LogStream.BUILD)
    assert not any("Using cache" in line or "reusing" in line for line in other_log), other_log
    # Deleting one takes only its own tag: the others keep the image.
    await secure_host.registry.delete(mine[0].id)
    await secure_host.registry.wait(mine[0].id, State.DELETED, 60)
    for program in mine[1:]:
        assert secure_host.docker.images.get(secure_host.tag_of(program)).id == mine[0].image_id
    with pytest.raises(ImageNotFound):
        secure_host.docker.images.get(secure_host.tag_of(mine[0]))


async def build_over(host: SecureHost, program: Program) -> Program:
    """The program once its build is over (an image, or ERROR); it was started already."""
    found: Program = await eventually(
        lambda: host.registry.get(program.id),
        lambda now: bool(now.image_id) or now.state is State.ERROR,
        within=240,
        what=f"the build of {program.id}",
    )
    return found


async def test_a_flood_of_builds_does_not_starve_another_tenant(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    from hershy.adapters.docker.build import BuildLimits

    limits = BuildLimits(max_concurrent=1, max_per_user=1)
    async with open_secure_host(
        tmp_path / "data", docker_client, stub_binary, limits=limits
    ) as host:
        flood = [
            await host.stub_program(
                ATTACKER, f"FROM {BASE_IMAGE}\nRUN sleep 3 && echo {secrets.token_hex(6)}\n"
            )
            for _ in range(3)
        ]
        other = await host.stub_program(
            VICTIM, f"FROM {BASE_IMAGE}\nRUN echo {secrets.token_hex(6)}\n"
        )
        for program in flood:
            await host.registry.start(program.id)
        await asyncio.sleep(0.5)
        await host.registry.start(other.id)
        # Those waiting say so in the program itself (Program.status_note), not only the log.
        notes = await eventually(
            lambda: sorted(host.registry.get(p.id).note for p in [*flood, other]),
            lambda found: sum(note.startswith("build queued: ") for note in found) >= 2,
            within=10,
            what="the queued builds' notes",
        )
        assert "build queued: 2 ahead" in notes or "build queued: 3 ahead" in notes, notes
        for program in [other, *flood]:
            built = await build_over(host, program)
            assert built.image_id, built.error

        async def when(program_id: str, starting: str) -> float:
            async for line in host.registry.logs(
                program_id, None, frozenset({LogStream.BUILD}), False
            ):
                if line.text.startswith(starting):
                    return line.at
            raise AssertionError(f"no build line starting {starting!r} in {program_id}")

        # The other tenant's build ran second: right after the flood's first, before the
        # other two, which were queued before it (and were told their place).
        other_built = await when(other.id, "built ")
        flood_built = sorted([await when(p.id, "built ") for p in flood])
        flood_building = sorted([await when(p.id, "building ") for p in flood])
        assert flood_built[0] < other_built < flood_building[1], (flood_built, other_built)
        queued = [await host.log(p.id, LogStream.BUILD) for p in flood]
        assert sum(any(line.startswith("queued: ") for line in log) for log in queued) >= 2


async def test_builds_of_users_carry_the_user_label(secure_host: SecureHost) -> None:
    # The user and the Host are in the image's tag, not in labels (each label would be a
    # build step of its own: `image_names`); the user's images are found by it, and only
    # theirs (the only cache their builds may use).
    program = await secure_host.built(await secure_host.stub_program(VICTIM, "FROM scratch\n"))
    image = secure_host.docker.images.get(secure_host.tag_of(program))
    assert image.tags == [f"hershy/{program.id}:{program.build_id}.{secure_host.host_id}.{VICTIM}"]
    assert [found.id for found in secure_host.images_of_user(VICTIM)] == [image.id]
    assert secure_host.images_of_user(ATTACKER) == []
    assert not any(label.startswith("dev.hershy.") for label in image.labels or {})


async def test_a_dockerfile_of_only_from_gets_an_image_of_its_own_carrying_the_user_label(
    secure_host: SecureHost,
) -> None:
    base = secure_host.docker.images.get(BASE_IMAGE)
    program = await secure_host.built(await secure_host.create(VICTIM, f"FROM {BASE_IMAGE}\n"))
    assert program.image_id, program.error
    # Not the base image under another tag: deleting the program must not reach it.
    assert program.image_id != base.id
    image = secure_host.docker.images.get(secure_host.tag_of(program))
    assert image.labels["dev.hershy.user"] == VICTIM
    assert image.labels[LABEL_MANAGED]
    scratch_only = await secure_host.built(await secure_host.create(VICTIM, "FROM scratch\n"))
    assert scratch_only.image_id, scratch_only.error
    for built in (program, scratch_only):
        await secure_host.registry.delete(built.id)
        await secure_host.registry.wait(built.id, State.DELETED, 60)
    assert secure_host.docker.images.get(BASE_IMAGE).id == base.id
    assert secure_host.images_of_user(VICTIM) == []
