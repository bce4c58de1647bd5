"""A secret set on a program reaches the program, and nothing else, on the real engine and runsc.

The real `hershy serve` runs a busybox program that, at each start, prints
the SHA-256 of `/run/secrets/API_KEY`, then the value itself (the log must
get `[secret API_KEY]` instead), its environment variable, and serves its
WatcherAPI status with httpd. Then the value's bytes are looked for
everywhere else: every gRPC and REST answer (get, list, watch, logs, source,
events, metrics, the secret calls' own answers), every log file, the Host's
own output, `docker inspect` of the container and Docker's files of it, the
store and every file under the data dir. The store holds the value sealed
only; the tmpfs it is handed over in is gone once nothing runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import docker
import grpc
import pytest
from google.protobuf import json_format

from hershy.adapters.docker.secret_files import DEFAULT_ROOT
from hershy.adapters.docker.state_volumes import mounted_fs_type
from hershy.adapters.host_key import KEY_FILE
from hershy.v1 import config_pb2 as config_pb
from hershy.v1 import config_pb2_grpc as config_grpc
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.integration.conftest import BASE_IMAGE, containers_of, eventually
from tests.integration.test_faults import clean_docker, host_process, until_state

pytestmark = pytest.mark.docker

__all__ = ["clean_docker"]

USER = "admin"  # --no-auth: every caller is the admin
DOCKERFILE = f"""FROM {BASE_IMAGE}
COPY run.sh /run.sh
COPY www /www
ENTRYPOINT ["/bin/sh", "/run.sh"]
"""
SCRIPT = """
echo "hash=$(sha256sum /run/secrets/API_KEY | cut -d' ' -f1)"
echo "value=$(cat /run/secrets/API_KEY)"
echo "greeting=$GREETING"
ls -ln /run/secrets >&2
if echo x > /run/secrets/written 2>/dev/null; then echo "secrets writable"; fi
exec httpd -f -p 8080 -h /www
"""
FILES = {"run.sh": SCRIPT.encode(), "www/watcher/status": b'{"state":"Ready"}\n'}


def forms(value: bytes) -> list[bytes]:
    """The value as it could show up: raw, base64 (JSON bytes fields), hex."""
    return [value, base64.b64encode(value), value.hex().encode()]


def assert_absent(value: bytes, blob: bytes, where: str) -> None:
    for form in forms(value):
        assert form not in blob, f"the secret's bytes ({form[:12]!r}...) appear in {where}"


async def stdout_of(stub: Any, name: str, run: int) -> str:
    lines = []
    async for entry in stub.ReadProgramLogs(
        pb.ReadProgramLogsRequest(name=name, streams=[pb.LOG_STREAM_STDOUT, pb.LOG_STREAM_STDERR])
    ):
        if entry.run == run:
            lines.append(entry.line)
    return "\n".join(lines)


async def until_printed(stub: Any, name: str, run: int) -> str:
    async def read() -> str:
        return await stdout_of(stub, name, run)

    text: str = await eventually(
        read, lambda text: "greeting=" in text, within=30, what=f"{name} run {run} printing"
    )
    return text


async def sse_for(session: aiohttp.ClientSession, url: str, seconds: float) -> bytes:
    """What an SSE stream sends within `seconds` (the snapshot, SYNCED, then changes)."""
    body = b""
    try:
        async with asyncio.timeout(seconds), session.get(url) as answer:
            async for chunk in answer.content.iter_any():
                body += chunk
    except TimeoutError:
        pass
    return body


def every_file(root: Path) -> list[tuple[Path, bytes]]:
    found = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            found.append((path, path.read_bytes()))
    return found


async def test_a_secret_reaches_the_program_and_appears_nowhere_else(
    tmp_path: Path, docker_client: docker.DockerClient, clean_docker: list[str]
) -> None:
    value = b"sk-live-" + secrets.token_hex(16).encode()
    rotated = b"sk-next-" + secrets.token_hex(16).encode()
    answers: list[bytes] = []
    with host_process(tmp_path) as host:
        async with grpc.aio.insecure_channel(host.address) as channel:
            programs = pb_grpc.ProgramServiceStub(channel)
            config = config_grpc.ProgramConfigServiceStub(channel)
            created = await programs.CreateProgram(
                pb.CreateProgramRequest(
                    user_id=USER,
                    dockerfile=DOCKERFILE,
                    src_files=FILES,
                    alias="secret-bot",
                    env={"GREETING": "hello"},
                    resources=pb.Resources(state_bytes=16 * 1024 * 1024),
                )
            )
            clean_docker.append(created.id)
            name = "programs/secret-bot"  # the alias, wherever a name is taken
            secret = await config.SetSecret(
                config_pb.SetSecretRequest(parent=name, secret_id="API_KEY", value=value)
            )
            assert secret.version == 1
            assert secret.name.endswith("/secrets/API_KEY")
            answers.append(secret.SerializeToString())
            await programs.StartProgram(pb.StartProgramRequest(name=name))
            ready = await until_state(host.address, name, pb.STATE_READY, 90)
            output = await until_printed(programs, name, ready.run)

            # The program read it from its memory-backed folder, read-only, mode 0400.
            assert f"hash={hashlib.sha256(value).hexdigest()}" in output, output
            assert "value=[secret API_KEY]" in output, output
            assert "greeting=hello" in output, output
            assert "-r--------" in output, output
            assert "secrets writable" not in output, output
            folder = DEFAULT_ROOT / host_id(tmp_path) / created.id
            assert mounted_fs_type(folder) == "tmpfs"
            assert not str(folder).startswith(str(tmp_path))

            # Every answer of the API.
            answers.append(
                (await programs.GetProgram(pb.GetProgramRequest(name=name))).SerializeToString()
            )
            listed = await programs.ListPrograms(pb.ListProgramsRequest())
            answers.append(listed.SerializeToString())
            answers.append(
                (
                    await programs.GetProgramSource(pb.GetProgramSourceRequest(name=name))
                ).SerializeToString()
            )
            answers.append(
                (
                    await config.ListSecrets(config_pb.ListSecretsRequest(parent=name))
                ).SerializeToString()
            )
            async for entry in programs.ReadProgramLogs(pb.ReadProgramLogsRequest(name=name)):
                answers.append(entry.SerializeToString())
            watch = programs.WatchPrograms(pb.WatchProgramsRequest(resume_revision=0))
            try:
                async with asyncio.timeout(3):
                    async for message in watch:
                        answers.append(message.SerializeToString())
                        answers.append(json_format.MessageToJson(message).encode())
            except TimeoutError:
                pass
            finally:
                watch.cancel()

            # Rotate it: a restart hands the new value over; the old one stays redacted too.
            secret = await config.SetSecret(
                config_pb.SetSecretRequest(parent=name, secret_id="API_KEY", value=rotated)
            )
            assert secret.version == 2
            assert "restart" in secret.status_note
            await programs.RestartProgram(pb.RestartProgramRequest(name=name))
            await eventually(
                lambda: state_of_run(programs, name),  # type: ignore[arg-type,return-value]
                lambda p: p.state == pb.STATE_READY and p.run > ready.run,
                within=90,
                what="the restart",
            )
            again = await programs.GetProgram(pb.GetProgramRequest(name=name))
            output = await until_printed(programs, name, again.run)
            assert f"hash={hashlib.sha256(rotated).hexdigest()}" in output, output

            (container,) = containers_of(docker_client, created.id)
            inspected = json.dumps(docker_client.api.inspect_container(container.id)).encode()

        http = f"http://127.0.0.1:{host.http_port}"
        async with aiohttp.ClientSession() as session:
            for path in (
                "/programs",
                "/programs/secret-bot",
                f"/programs/{created.id}",
                "/programs/secret-bot/logs?tail=1000",
                "/programs/secret-bot/logs?format=ndjson",
                "/programs/secret-bot/source",
                "/programs/secret-bot/secrets",
                "/metrics",
            ):
                async with session.get(http + path) as response:
                    assert response.status == 200, (path, await response.text())
                    answers.append(await response.read())
            answers.append(await sse_for(session, http + "/events", 3))
            answers.append(await sse_for(session, http + "/programs/secret-bot/events", 3))

        # Docker's own copy of what the container printed (json-file, root's, removed with
        # the container) is the one place a value the program itself prints goes unredacted
        # (README, "Secrets"); the container's config and everything else hold none.
        container_dir = Path("/var/lib/docker/containers") / container.id
        docker_files = b"".join(
            blob for path, blob in every_file(container_dir) if not path.name.endswith("-json.log")
        )
        for secret_value in (value, rotated):
            for index, answer in enumerate(answers):
                assert_absent(secret_value, answer, f"API answer {index}")
            assert_absent(secret_value, inspected, "docker inspect")
            assert_absent(secret_value, docker_files, "Docker's files of the container")

        # The store holds it sealed, and the key is in its own 0600 file.
        key = tmp_path / "data" / KEY_FILE
        assert key.stat().st_mode & 0o777 == 0o600
        store = (tmp_path / "data" / "hershy.db").read_bytes()
        assert (
            b"API_KEY" in store or b"API_KEY" in (tmp_path / "data" / "hershy.db-wal").read_bytes()
        )
        everything = every_file(tmp_path)  # the data dir, and the Host's own output beside it
        assert any(path.name == "compose.json" for path, _ in everything)
        for file_path, blob in everything:
            for secret_value in (value, rotated):
                assert_absent(secret_value, blob, str(file_path))

        # Deleted: the tmpfs goes with the program's containers, the sealed rows with it.
        async with grpc.aio.insecure_channel(host.address) as channel:
            programs = pb_grpc.ProgramServiceStub(channel)
            await programs.DeleteProgram(pb.DeleteProgramRequest(name=name))
            await eventually(
                lambda: gone(programs, created.id), lambda done: done, within=60, what="deleted"
            )
        assert mounted_fs_type(folder) is None
        assert not folder.exists()
        assert not container_dir.exists()  # Docker's copy of its output went with it


async def state_of_run(stub: Any, name: str) -> pb.Program:
    program: pb.Program = await stub.GetProgram(pb.GetProgramRequest(name=name))
    return program


async def gone(stub: Any, program_id: str) -> bool:
    try:
        await stub.GetProgram(pb.GetProgramRequest(name=f"programs/{program_id}"))
    except grpc.aio.AioRpcError as error:
        return error.code() == grpc.StatusCode.NOT_FOUND
    return False


def host_id(base: Path) -> str:
    """The Host's id, as its store keeps it (it names the Host's secrets folder)."""
    import sqlite3

    with sqlite3.connect(base / "data" / "hershy.db") as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'host_id'").fetchone()
    return str(row[0])


async def test_a_program_running_as_a_numeric_user_reads_its_secrets_and_only_them(
    tmp_path: Path, clean_docker: list[str]
) -> None:
    value = b"sk-user-" + secrets.token_hex(16).encode()
    dockerfile = DOCKERFILE.replace("ENTRYPOINT", "USER 1000:1000\nENTRYPOINT")
    with host_process(tmp_path) as host:
        async with grpc.aio.insecure_channel(host.address) as channel:
            programs = pb_grpc.ProgramServiceStub(channel)
            config = config_grpc.ProgramConfigServiceStub(channel)
            created = await programs.CreateProgram(
                pb.CreateProgramRequest(
                    user_id=USER,
                    dockerfile=dockerfile,
                    src_files=FILES,
                    resources=pb.Resources(state_bytes=16 * 1024 * 1024),
                )
            )
            clean_docker.append(created.id)
            name = f"programs/{created.id}"
            await config.SetSecret(
                config_pb.SetSecretRequest(parent=name, secret_id="API_KEY", value=value)
            )
            await programs.StartProgram(pb.StartProgramRequest(name=name))
            ready = await until_state(host.address, name, pb.STATE_READY, 90)
            output = await until_printed(programs, name, ready.run)
            assert f"hash={hashlib.sha256(value).hexdigest()}" in output, output
            # Its own, mode 0400.
            assert re.search(r"-r-------- +1 +1000 +1000 .*API_KEY", output), output
            assert "secrets writable" not in output, output
            await programs.DeleteProgram(pb.DeleteProgramRequest(name=name))
            await eventually(
                lambda: gone(programs, created.id), lambda done: done, within=60, what="deleted"
            )
