"""Program names (aliases), environment variables and secrets on the real `hershy serve
--runtime fake`, with tokens on, through gRPC and the REST shim.

Names are unique per user (two users may use the same one); `programs/{alias}`
and `users/{user}/programs/{alias}` work wherever `programs/{id}` does (REST's
`/programs/{alias}/...` and the proxy too); another user's name answers
exactly like a missing one; a rename frees the old name at once. Secrets are
write-only: no answer carries a value.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hershy.v1 import config_pb2 as config_pb
from hershy.v1 import config_pb2_grpc as config_grpc
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from hershy_client import AsyncClient, Client, NotFound
from tests.e2e.conftest import hershy_command
from tests.e2e.rest_support import (
    client_session,
    create_program,
    new_user,
    program_with_watcher,
    ready_program,
    running_rest_server,
)
from tests.e2e.test_cli import (
    NOT_FOUND,
    USAGE,
    CliHost,
    Run,
    cli,
    cli_env,
    new_token,
    one_line_error,
    running_host,
)

DOCKERFILE = "FROM scratch\n"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliHost]:
    with running_host(tmp_path_factory.mktemp("hershy-names")) as running:
        yield running


@pytest.fixture(scope="module")
def alice(host: CliHost) -> str:
    return new_token(host, "alice")


@pytest.fixture(scope="module")
def bob(host: CliHost) -> str:
    return new_token(host, "bob")


class Api:
    def __init__(self, host: CliHost, token: str) -> None:
        self._channel = grpc.insecure_channel(host.target)
        self.programs = pb_grpc.ProgramServiceStub(self._channel)
        self.config = config_grpc.ProgramConfigServiceStub(self._channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.host = host
        self.token = token

    def create(self, alias: str = "", **env: str) -> pb.Program:
        program: pb.Program = self.programs.CreateProgram(
            pb.CreateProgramRequest(dockerfile=DOCKERFILE, alias=alias, env=env),
            metadata=self.metadata,
        )
        return program

    def get(self, name: str) -> pb.Program:
        program: pb.Program = self.programs.GetProgram(
            pb.GetProgramRequest(name=name), metadata=self.metadata
        )
        return program

    def rename(self, name: str, alias: str) -> pb.Program:
        program: pb.Program = self.config.RenameProgram(
            config_pb.RenameProgramRequest(name=name, alias=alias), metadata=self.metadata
        )
        return program

    def rest(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.host.http}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def close(self) -> None:
        self._channel.close()


@pytest.fixture
def as_alice(host: CliHost, alice: str) -> Iterator[Api]:
    api = Api(host, alice)
    yield api
    api.close()


@pytest.fixture
def as_bob(host: CliHost, bob: str) -> Iterator[Api]:
    api = Api(host, bob)
    yield api
    api.close()


def not_found(call: Any) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value
    return str(caught.value.details())


def test_a_name_works_wherever_an_id_does(as_alice: Api) -> None:
    program = as_alice.create("bot", GREETING="hi")
    assert program.alias == "bot"
    assert dict(program.env) == {"GREETING": "hi"}
    for name in ("programs/bot", "users/alice/programs/bot", f"programs/{program.id}"):
        assert as_alice.get(name).id == program.id
    started = as_alice.programs.StartProgram(
        pb.StartProgramRequest(name="programs/bot"), metadata=as_alice.metadata
    )
    assert started.id == program.id
    status, body = as_alice.rest("GET", "/programs/bot")
    assert status == 200, body
    assert body["program_id"] == program.id
    assert body["alias"] == "bot"
    assert body["environment"] == {"GREETING": "hi"}
    status, body = as_alice.rest("GET", "/programs/bot/source")
    assert status == 200, body


def test_names_are_unique_per_user_not_across_users(as_alice: Api, as_bob: Api) -> None:
    first = as_alice.create("unique-one")
    with pytest.raises(grpc.RpcError) as caught:
        as_alice.create("unique-one")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Bob may use the same name: his own program, not Alice's.
    bobs = as_bob.create("unique-one")
    assert bobs.id != first.id
    assert as_bob.get("programs/unique-one").id == bobs.id
    assert as_alice.get("programs/unique-one").id == first.id
    status, body = as_bob.rest(
        "POST", "/programs", {"dockerfile": DOCKERFILE, "alias": "unique-one"}
    )
    assert status == 409, body


def test_another_users_name_answers_like_a_missing_one(as_alice: Api, as_bob: Api) -> None:
    program = as_alice.create("private-bot")
    taken = not_found(lambda: as_bob.get("users/alice/programs/private-bot"))
    missing = not_found(lambda: as_bob.get("users/alice/programs/never-was"))
    assert taken.replace("private-bot", "X") == missing.replace("never-was", "X")
    # Bob's `programs/private-bot` is his own name (he has none): missing, same words.
    own = not_found(lambda: as_bob.get("programs/private-bot"))
    assert own == taken
    not_found(lambda: as_bob.get(f"programs/{program.id}"))
    not_found(lambda: as_bob.rename(f"programs/{program.id}", "mine-now"))
    for path in ("/programs/private-bot", "/users/alice/programs/private-bot"):
        status, _ = as_bob.rest("GET", path)
        assert status == 404
    status, body = as_bob.rest("GET", "/programs/private-bot/secrets")
    assert status == 404, body
    status, body = as_bob.rest("GET", "/programs/private-bot/watcher/status")
    assert status == 404, body


def test_rename_rules(as_alice: Api) -> None:
    program = as_alice.create("old-name")
    other = as_alice.create("other-name")
    with pytest.raises(grpc.RpcError) as caught:
        as_alice.rename("programs/old-name", "other-name")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    renamed = as_alice.rename("programs/old-name", "new-name")
    assert renamed.alias == "new-name"
    assert renamed.id == program.id
    not_found(lambda: as_alice.get("programs/old-name"))  # free at once, finds nothing
    assert as_alice.get("programs/new-name").id == program.id
    # The freed name can be taken by another of her programs.
    assert as_alice.rename(f"programs/{other.id}", "old-name").alias == "old-name"
    # A name never looks like an id, and is lower case.
    for bad in ("prog-123", "Upper", "1st", "a" * 64, "with_underscore"):
        with pytest.raises(grpc.RpcError) as caught:
            as_alice.rename("programs/new-name", bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    status, body = as_alice.rest("POST", "/programs/new-name/rename", {"alias": ""})
    assert status == 200, body
    assert body["alias"] == ""
    not_found(lambda: as_alice.get("programs/new-name"))


def test_env_is_set_and_unset_and_validated(as_alice: Api) -> None:
    as_alice.create("env-bot", A="1", B="2")
    status, body = as_alice.rest(
        "POST", "/programs/env-bot/env", {"set": {"C": "3", "A": "one"}, "unset": ["B"]}
    )
    assert status == 200, body
    assert body["environment"] == {"A": "one", "C": "3"}
    for bad in (
        {"set": {"lower": "x"}},
        {"set": {"HERSHY_TOKEN": "x"}},
        {"set": {"A": "x" * 5000}},
    ):
        status, body = as_alice.rest("POST", "/programs/env-bot/env", bad)
        assert status in (400, 413), body
    status, body = as_alice.rest(
        "POST", "/programs/env-bot/env", {"set": {f"V{i}": "x" for i in range(65)}}
    )
    assert status == 429, body


def test_secrets_are_write_only(as_alice: Api, as_bob: Api) -> None:
    as_alice.create("secret-holder")
    value = "sk-" + secrets.token_hex(16)
    status, body = as_alice.rest("PUT", "/programs/secret-holder/secrets/API_KEY", {"value": value})
    assert status == 200, body
    assert body["version"] == 1
    assert value not in json.dumps(body)
    status, body = as_alice.rest(
        "PUT", "/programs/secret-holder/secrets/API_KEY", {"value": value + "2"}
    )
    assert body["version"] == 2
    listed = as_alice.config.ListSecrets(
        config_pb.ListSecretsRequest(parent="programs/secret-holder"), metadata=as_alice.metadata
    )
    assert [secret.secret_id for secret in listed.secrets] == ["API_KEY"]
    assert value.encode() not in listed.SerializeToString()
    # A bad name or an empty value: refused, and the error never repeats the value.
    status, body = as_alice.rest(
        "PUT", "/programs/secret-holder/secrets/HERSHY_X", {"value": value}
    )
    assert status == 400, body
    assert value not in json.dumps(body)
    status, body = as_alice.rest("PUT", "/programs/secret-holder/secrets/X", {"value": ""})
    assert status == 400, body
    status, body = as_alice.rest(
        "PUT", "/programs/secret-holder/secrets/BIG", {"value": "x" * (64 * 1024 + 1)}
    )
    assert status in (400, 413), body
    # Not Bob's business: missing.
    status, body = as_bob.rest("PUT", "/programs/secret-holder/secrets/API_KEY", {"value": "x"})
    assert status == 404, body
    status, body = as_alice.rest("DELETE", "/programs/secret-holder/secrets/API_KEY")
    assert status == 200, body
    status, body = as_alice.rest("DELETE", "/programs/secret-holder/secrets/API_KEY")
    assert status == 404, body
    status, body = as_alice.rest("GET", "/programs/secret-holder/secrets")
    assert body == {"secrets": []}


# --- the CLI ---------------------------------------------------------------------------------


def hershy_with_stdin(host: CliHost, token: str, stdin: bytes, *args: str) -> Run:
    result = subprocess.run(
        [*hershy_command(), *args],
        env=cli_env(host, token),
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())


def test_the_cli_deploys_by_name_and_sets_env_and_secrets(
    host: CliHost, alice: str, tmp_path: Path
) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "Dockerfile").write_text(DOCKERFILE)
    deployed = cli(host, alice, "deploy", str(folder), "--name", "cli-bot")
    program_id = deployed.stdout.strip()
    assert cli(host, alice, "get", program_id, "--json").stdout.count('"alias": "cli-bot"') == 1
    cli(host, alice, "env", "set", "cli-bot", "MODE=live", "LEVEL=3")
    cli(host, alice, "env", "rm", "cli-bot", "LEVEL")
    assert cli(host, alice, "env", "ls", "cli-bot").stdout.split() == ["MODE=live"]
    shown = cli(host, alice, "get", "cli-bot").stdout.splitlines()
    assert shown[0].split() == ["id", program_id]
    assert shown[1].split() == ["name", "cli-bot"]
    assert ["env", "MODE=live"] in [line.split() for line in shown]
    refused = cli(host, alice, "env", "set", "cli-bot", "bad-name=1", expect=USAGE)
    assert "bad-name" in one_line_error(refused)

    value = secrets.token_hex(16).encode()
    run = hershy_with_stdin(host, alice, value, "secret", "set", "cli-bot", "API_KEY")
    assert run.code == 0, run
    assert "version 1" in run.stderr
    assert "restart" in run.stderr  # it is READY: the answer says a restart hands it over
    key_file = tmp_path / "key"
    key_file.write_bytes(value + b"-2")
    cli(host, alice, "secret", "set", "cli-bot", "API_KEY", "--from-file", str(key_file))
    listed = cli(host, alice, "secret", "ls", "cli-bot")
    assert listed.stdout.split()[:2] == ["API_KEY", "v2"], listed
    as_json = cli(host, alice, "secret", "ls", "cli-bot", "--json")
    for run in (deployed, listed, as_json):
        assert value.decode() not in run.stdout + run.stderr
    cli(host, alice, "secret", "rm", "cli-bot", "API_KEY")
    assert cli(host, alice, "secret", "ls", "cli-bot").stdout == ""
    gone = cli(host, alice, "secret", "rm", "cli-bot", "API_KEY", expect=NOT_FOUND)
    assert "not found" in one_line_error(gone)
    # The value is never taken from the command line: there is no argument for it.
    typed = "typed-" + secrets.token_hex(8)
    extra = cli(host, alice, "secret", "set", "cli-bot", "API_KEY", typed, expect=USAGE)
    assert typed not in extra.stdout + extra.stderr
    assert "never from the command line" in extra.stderr


# --- the proxy -------------------------------------------------------------------------------


async def test_the_proxy_reaches_a_program_by_its_name_and_follows_a_rename(
    tmp_path: Path,
) -> None:
    with running_rest_server(tmp_path) as rest_host:  # --no-auth: every caller is the admin
        async with client_session() as http:
            # Another user's program of the same name is never the admin's `programs/proxied`.
            other = await create_program(http, rest_host, new_user())
            async with http.post(
                f"{rest_host.url}/programs/{other['program_id']}/rename", json={"alias": "proxied"}
            ) as answer:
                assert answer.status == 200, await answer.text()

            async def admins() -> dict[str, Any]:
                return await ready_program(http, rest_host, "admin")

            async with program_with_watcher(http, rest_host, admins) as (program, watcher):
                url = f"{rest_host.url}/programs"
                program_id = program["program_id"]
                async with http.get(f"{url}/proxied/watcher/status") as answer:
                    assert answer.status == 404, await answer.text()
                async with http.post(
                    f"{url}/{program_id}/rename", json={"alias": "proxied"}
                ) as answer:
                    assert answer.status == 200, await answer.text()
                for _ in range(2):  # the core's answer, then the cache's
                    async with http.get(f"{url}/proxied/watcher/status") as answer:
                        assert answer.status == 200, await answer.text()
                async with http.post(f"{url}/proxied/rename", json={"alias": "moved"}) as answer:
                    assert answer.status == 200, await answer.text()
                async with http.get(f"{url}/moved/proxy/watcher/status") as answer:
                    assert answer.status == 200, await answer.text()
                async with http.get(f"{url}/proxied/watcher/status") as answer:
                    assert answer.status == 404, await answer.text()
                assert [seen.raw_path for seen in watcher.seen] == ["/watcher/status"] * 3


def test_names_env_and_secrets_survive_a_host_restart(tmp_path: Path) -> None:
    value = "sk-" + secrets.token_hex(16)
    with running_host(tmp_path) as first:
        token = new_token(first, "carol")
        api = Api(first, token)
        program = api.create("keeper", MODE="live")
        status, body = api.rest("PUT", "/programs/keeper/secrets/API_KEY", {"value": value})
        assert status == 200, body
        api.close()
        grpc_address, http_address = first.target, first.http_address
    data = tmp_path / "data"
    assert (data / "secrets.key").stat().st_mode & 0o777 == 0o600
    for path in data.rglob("*"):
        if path.is_file():
            assert value.encode() not in path.read_bytes(), path
    with running_host(tmp_path, grpc_address, http_address) as again:
        api = Api(again, token)
        try:
            kept = api.get("programs/keeper")
            assert kept.id == program.id
            assert dict(kept.env) == {"MODE": "live"}
            status, body = api.rest("GET", "/programs/keeper/secrets")
            assert status == 200, body
            assert [(s["name"], s["version"]) for s in body["secrets"]] == [("API_KEY", 1)]
            with pytest.raises(grpc.RpcError) as caught:
                api.create("keeper")
            assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        finally:
            api.close()


def test_the_python_clients_name_configure_and_keep_secrets(host: CliHost, alice: str) -> None:
    with Client(host.target, token=alice, timeout=10) as client:
        program = client.create("alice", DOCKERFILE, alias="py-bot", env={"A": "1"})
        assert client.get("py-bot").id == program.id
        assert client.get("users/alice/programs/py-bot").id == program.id
        assert dict(client.set_env("py-bot", {"B": "2"}, ["A"]).env) == {"B": "2"}
        secret = client.set_secret("py-bot", "TOKEN", "value-123456")
        assert (secret.secret_id, secret.version) == ("TOKEN", 1)
        assert [s.secret_id for s in client.secrets("py-bot")] == ["TOKEN"]
        client.delete_secret("py-bot", "TOKEN")
        assert client.rename("py-bot", "py-bot-2").alias == "py-bot-2"
        with pytest.raises(NotFound):
            client.get("py-bot")

    async def run() -> None:
        async with AsyncClient(host.target, token=alice, timeout=10) as client:
            await client.set_secret("py-bot-2", "TOKEN", b"async-value")
            assert [s.version for s in await client.secrets("py-bot-2")] == [1]
            assert (await client.rename("py-bot-2", "py-bot-3")).alias == "py-bot-3"
            assert dict((await client.set_env("py-bot-3", unset=["B"])).env) == {}

    asyncio.run(run())
