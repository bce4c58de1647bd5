"""Tokens on the gRPC API: every RPC with no token, a wrong one, another user's, a revoked one
and the right one. Another user's program answers exactly like one that does not exist."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from hershy.v1 import token_pb2 as token_pb
from hershy.v1 import token_pb2_grpc as token_pb_grpc
from tests.e2e.conftest import ServerProcess, hershy_command, start_server

if TYPE_CHECKING:
    from hershy.v1.program_pb2_grpc import ProgramServiceAsyncStub
    from hershy.v1.token_pb2_grpc import TokenServiceAsyncStub

Code = grpc.StatusCode
DOCKERFILE = "FROM scratch\n"
#: Codes that say the caller got past authentication and authorisation.
PASSED = (Code.OK, Code.FAILED_PRECONDITION)
#: A call of the token tests: a token (or none) in, the status code out.
Rpc = Callable[[str | None], Awaitable[Code]]


@dataclass
class Tokens:
    admin: str
    alice: str
    bob: str
    revoked: str


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """`hershy serve` with tokens on; the admin's token read from --admin-token-file."""
    base = tmp_path_factory.mktemp("auth")
    token_file = base / "admin.token"
    server = start_server(base, "--admin-token-file", str(token_file))
    try:
        secret = token_file.read_text().strip()
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        yield server, secret
        assert secret not in server.stderr(), "the admin's token reached the log"
    finally:
        server.stop_and_check()


def bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return None if token is None else (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def stubs(
    secured: tuple[ServerProcess, str],
) -> AsyncIterator[tuple[ProgramServiceAsyncStub, TokenServiceAsyncStub]]:
    async with grpc.aio.insecure_channel(secured[0].address) as channel:
        yield pb_grpc.ProgramServiceStub(channel), token_pb_grpc.TokenServiceStub(channel)


@pytest.fixture
async def tokens(
    secured: tuple[ServerProcess, str],
    stubs: tuple[ProgramServiceAsyncStub, TokenServiceAsyncStub],
) -> Tokens:
    _, admin = secured
    _, token_service = stubs
    made = {}
    for user in ("alice", "bob", "carol"):
        token = await token_service.CreateToken(
            token_pb.CreateTokenRequest(user_id=user), metadata=bearer(admin)
        )
        assert token.secret.startswith("hershy_")
        made[user] = token
    await token_service.RevokeToken(
        token_pb.RevokeTokenRequest(name=made["carol"].name), metadata=bearer(admin)
    )
    return Tokens(admin, made["alice"].secret, made["bob"].secret, made["carol"].secret)


async def code_of(call: Awaitable[Any]) -> Code:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return Code.OK


async def stream_code(call: Any) -> Code:
    """The code a server stream ends with once it has sent its first message (or failed)."""
    try:
        async for _ in call:
            call.cancel()
            return Code.OK
    except grpc.aio.AioRpcError as error:
        return error.code()
    return Code.OK


async def test_every_program_rpc_with_every_kind_of_token(
    stubs: tuple[ProgramServiceAsyncStub, TokenServiceAsyncStub], tokens: Tokens
) -> None:
    programs, _ = stubs
    alices = await programs.CreateProgram(
        pb.CreateProgramRequest(dockerfile=DOCKERFILE), metadata=bearer(tokens.alice)
    )
    assert alices.user_id == "alice"  # a user's token creates for that user
    name = alices.name

    rpcs: dict[str, Rpc] = {
        "GetProgram": lambda t: code_of(
            programs.GetProgram(pb.GetProgramRequest(name=name), metadata=bearer(t))
        ),
        "StartProgram": lambda t: code_of(
            programs.StartProgram(pb.StartProgramRequest(name=name), metadata=bearer(t))
        ),
        "WaitProgram": lambda t: code_of(
            programs.WaitProgram(
                pb.WaitProgramRequest(name=name, state=pb.STATE_READY), metadata=bearer(t)
            )
        ),
        "RestartProgram": lambda t: code_of(
            programs.RestartProgram(pb.RestartProgramRequest(name=name), metadata=bearer(t))
        ),
        "StopProgram": lambda t: code_of(
            programs.StopProgram(pb.StopProgramRequest(name=name), metadata=bearer(t))
        ),
        "GetProgramSource": lambda t: code_of(
            programs.GetProgramSource(pb.GetProgramSourceRequest(name=name), metadata=bearer(t))
        ),
        "ReadProgramLogs": lambda t: stream_code(
            programs.ReadProgramLogs(pb.ReadProgramLogsRequest(name=name), metadata=bearer(t))
        ),
        "WatchPrograms(name)": lambda t: stream_code(
            programs.WatchPrograms(pb.WatchProgramsRequest(name=name), metadata=bearer(t))
        ),
    }
    for rpc, call in rpcs.items():
        assert await call(None) == Code.UNAUTHENTICATED, f"{rpc} with no token"
        assert await call("hershy_wrong-token") == Code.UNAUTHENTICATED, f"{rpc}, wrong token"
        assert await call(tokens.revoked) == Code.UNAUTHENTICATED, f"{rpc}, revoked token"
        assert await call(tokens.bob) == Code.NOT_FOUND, f"{rpc} with another user's token"
        # Past the token check; the program's state may still refuse (a second Start).
        assert await call(tokens.alice) in PASSED, f"{rpc} with the owner's token"
        assert await call(tokens.admin) in PASSED, f"{rpc} with the admin's token"
    # Another user's program looks exactly like a missing one: the same message.
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await programs.GetProgram(pb.GetProgramRequest(name=name), metadata=bearer(tokens.bob))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await programs.GetProgram(
            pb.GetProgramRequest(name="programs/prog-000000000000"), metadata=bearer(tokens.bob)
        )
    unknown = missing.value.details() or ""
    assert hidden.value.details() == unknown.replace("prog-000000000000", alices.id)
    delete: Rpc = lambda t: code_of(  # noqa: E731
        programs.DeleteProgram(pb.DeleteProgramRequest(name=name), metadata=bearer(t))
    )
    for token, code in [
        (None, Code.UNAUTHENTICATED),
        ("hershy_wrong-token", Code.UNAUTHENTICATED),
        (tokens.revoked, Code.UNAUTHENTICATED),
        (tokens.bob, Code.NOT_FOUND),
        (tokens.alice, Code.OK),
    ]:
        assert await delete(token) == code, f"DeleteProgram with {token}"


async def test_create_list_and_watch_show_each_user_only_their_own(
    stubs: tuple[ProgramServiceAsyncStub, TokenServiceAsyncStub], tokens: Tokens
) -> None:
    programs, _ = stubs
    create: Callable[[str | None, str], Awaitable[Code]] = lambda t, user: code_of(  # noqa: E731
        programs.CreateProgram(
            pb.CreateProgramRequest(user_id=user, dockerfile=DOCKERFILE), metadata=bearer(t)
        )
    )
    assert await create(None, "alice") == Code.UNAUTHENTICATED
    assert await create("hershy_wrong-token", "alice") == Code.UNAUTHENTICATED
    assert await create(tokens.revoked, "carol") == Code.UNAUTHENTICATED
    assert await create(tokens.bob, "alice") == Code.PERMISSION_DENIED
    assert await create(tokens.alice, "alice") == Code.OK
    assert await create(tokens.admin, "bob") == Code.OK

    watch = programs.WatchPrograms(pb.WatchProgramsRequest(), metadata=bearer(tokens.bob))
    listed = await programs.ListPrograms(pb.ListProgramsRequest(), metadata=bearer(tokens.bob))
    assert listed.programs
    assert {p.user_id for p in listed.programs} == {"bob"}
    assert listed.total_size == len(listed.programs)
    spying = await programs.ListPrograms(
        pb.ListProgramsRequest(user_id="alice"), metadata=bearer(tokens.bob)
    )
    assert (list(spying.programs), spying.total_size) == ([], 0)
    everyone = await programs.ListPrograms(pb.ListProgramsRequest(), metadata=bearer(tokens.admin))
    assert {"alice", "bob"} <= {p.user_id for p in everyone.programs}
    for token in (None, "hershy_wrong-token", tokens.revoked):
        assert (
            await code_of(programs.ListPrograms(pb.ListProgramsRequest(), metadata=bearer(token)))
            == Code.UNAUTHENTICATED
        )
        assert (
            await stream_code(
                programs.WatchPrograms(pb.WatchProgramsRequest(), metadata=bearer(token))
            )
            == Code.UNAUTHENTICATED
        )
    # Bob's Watch: a snapshot of his programs only, then only his changes.
    seen = []
    while True:
        message = await asyncio.wait_for(watch.read(), 5)
        assert isinstance(message, pb.WatchProgramsResponse)
        seen.append(message)
        if message.type == pb.WatchProgramsResponse.TYPE_SYNCED:
            break
    assert {m.program.user_id for m in seen if m.HasField("program")} == {"bob"}
    await create(tokens.alice, "alice")
    await create(tokens.bob, "bob")
    change = await asyncio.wait_for(watch.read(), 5)
    assert isinstance(change, pb.WatchProgramsResponse)
    assert change.program.user_id == "bob"
    watch.cancel()


async def test_only_the_admin_manages_tokens(
    stubs: tuple[ProgramServiceAsyncStub, TokenServiceAsyncStub], tokens: Tokens
) -> None:
    _, token_service = stubs
    rpcs: dict[str, Rpc] = {
        "CreateToken": lambda t: code_of(
            token_service.CreateToken(
                token_pb.CreateTokenRequest(user_id="dave"), metadata=bearer(t)
            )
        ),
        "ListTokens": lambda t: code_of(
            token_service.ListTokens(token_pb.ListTokensRequest(), metadata=bearer(t))
        ),
        "RevokeToken": lambda t: code_of(
            token_service.RevokeToken(
                token_pb.RevokeTokenRequest(name="tokens/tok-missing"), metadata=bearer(t)
            )
        ),
    }
    for rpc, call in rpcs.items():
        for token in (None, "hershy_wrong-token", tokens.revoked):
            assert await call(token) == Code.UNAUTHENTICATED, f"{rpc} with {token}"
        assert await call(tokens.alice) == Code.PERMISSION_DENIED, f"{rpc} as a user"
    assert await rpcs["CreateToken"](tokens.admin) == Code.OK
    assert await rpcs["ListTokens"](tokens.admin) == Code.OK
    assert await rpcs["RevokeToken"](tokens.admin) == Code.NOT_FOUND
    listed = await token_service.ListTokens(
        token_pb.ListTokensRequest(), metadata=bearer(tokens.admin)
    )
    assert all(token.secret == "" for token in listed.tokens), "a secret was shown twice"
    me = await token_service.GetCurrentToken(
        token_pb.GetCurrentTokenRequest(), metadata=bearer(tokens.alice)
    )
    assert (me.user_id, me.admin, me.secret) == ("alice", False, "")
    assert (
        await code_of(
            token_service.GetCurrentToken(
                token_pb.GetCurrentTokenRequest(), metadata=bearer(tokens.revoked)
            )
        )
        == Code.UNAUTHENTICATED
    )


def test_no_auth_is_refused_beyond_loopback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *hershy_command(),
            "serve",
            "--runtime",
            "fake",
            "--no-auth",
            "--data-dir",
            str(tmp_path),
            "--grpc-addr",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "--no-auth is allowed only when both addresses are on loopback" in result.stderr


def scrape(http: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{http}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def figure(text: str, name: str, **labels: str) -> float:
    """One sample of a scrape (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_metrics_need_the_admin_and_move_with_real_operations(
    secured: tuple[ServerProcess, str],
    stubs: tuple[ProgramServiceAsyncStub, TokenServiceAsyncStub],
    tokens: Tokens,
) -> None:
    http = secured[0].http_address
    assert (await asyncio.to_thread(scrape, http, None))[0] == 401
    assert (await asyncio.to_thread(scrape, http, "hershy_wrong-token"))[0] == 401
    assert (await asyncio.to_thread(scrape, http, tokens.revoked))[0] == 401
    assert (await asyncio.to_thread(scrape, http, tokens.alice))[0] == 403
    status, before = await asyncio.to_thread(scrape, http, tokens.admin)
    assert status == 200
    assert "# TYPE hershy_transitions_total counter" in before

    programs, _ = stubs
    program = await programs.CreateProgram(
        pb.CreateProgramRequest(dockerfile=DOCKERFILE), metadata=bearer(tokens.alice)
    )
    await programs.StartProgram(
        pb.StartProgramRequest(name=program.name), metadata=bearer(tokens.alice)
    )
    await programs.WaitProgram(
        pb.WaitProgramRequest(name=program.name, state=pb.STATE_READY),
        metadata=bearer(tokens.alice),
    )
    refused = await code_of(
        programs.StartProgram(
            pb.StartProgramRequest(name=program.name), metadata=bearer(tokens.alice)
        )
    )
    assert refused == Code.FAILED_PRECONDITION
    # Nothing listens on a fake program's port: the proxy answers 502, and counts it.
    proxied = urllib.request.Request(f"http://{http}/programs/{program.id}/watcher/status")
    proxied.add_header("Authorization", f"Bearer {tokens.alice}")
    with pytest.raises(urllib.error.HTTPError) as bad_gateway:
        await asyncio.to_thread(urllib.request.urlopen, proxied, None, 10)
    assert bad_gateway.value.code == 502

    _, after = await asyncio.to_thread(scrape, http, tokens.admin)

    def moved(name: str, **labels: str) -> float:
        return figure(after, name, **labels) - figure(before, name, **labels)

    assert moved("hershy_transitions_total", from_state="created", to_state="building") == 1
    assert moved("hershy_transitions_total", from_state="starting", to_state="ready") == 1
    assert moved("hershy_build_duration_seconds_count", outcome="built") == 1
    assert moved("hershy_start_duration_seconds_count", outcome="ready") == 1
    assert moved("hershy_grpc_requests_total", method="CreateProgram", code="OK") >= 1
    assert (
        moved("hershy_grpc_requests_total", method="StartProgram", code="FAILED_PRECONDITION") == 1
    )
    assert moved("hershy_proxy_requests_total", status="502") == 1
    assert figure(after, "hershy_programs", state="ready") >= 1
    assert tokens.admin not in after
    assert tokens.alice not in after
