"""End-to-end: hostile input and hostile programs, on a Host with tokens on.

- a WatcherAPI answering malformed HTTP (a 200 KB header, 500 headers,
  Transfer-Encoding with Content-Length, no HTTP at all) is 502
  WATCHER_UNREACHABLE, with one log line and no traceback;
- a tar whose member's data is missing, or whose header is corrupt, is 400
  naming the member, never a file silently dropped;
- no error message echoes a client's value unbounded (a 100,000-character
  user id used to make the answer itself fail, 503);
- one user's flood of creates is refused past the per-user limit, and
  another user's create goes through meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import aiohttp
import grpc
import pytest

from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from hershy.v1 import token_pb2
from hershy.v1 import token_pb2_grpc as token_grpc
from tests.e2e.rest_support import (
    RestHost,
    client_session,
    running_rest_server,
    target_port,
)
from tests.e2e.test_rest_auth import call, make_user, program_on_a_free_port

Session = aiohttp.ClientSession
#: The longest message any hostile input may produce (the value itself is cut to 80).
MESSAGE_BOUND = 600
HUGE = "u" * 100_000


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-hostile"), auth=True) as host:
        yield host


@pytest.fixture
async def http() -> AsyncIterator[Session]:
    async with client_session() as session:
        yield session


@pytest.fixture
async def channel(rest_host: RestHost) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(rest_host.grpc_address) as chan:
        yield chan


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# --- malformed WatcherAPI answers ------------------------------------------------------

MALFORMED = {
    "huge-header": b"HTTP/1.1 200 OK\r\nX-Big: "
    + b"a" * 200_000
    + b"\r\nContent-Length: 0\r\n\r\n",
    "500-headers": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    + b"Content-Length: 0\r\n\r\n",
    "te-and-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    b"0\r\n\r\n",
    "garbage": b"\x00\x01 not http at all\r\n\r\n",
    "bad-status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
}


@contextlib.asynccontextmanager
async def answering(port: int, answer: bytes) -> AsyncIterator[None]:
    """A 'WatcherAPI' that answers every request with these exact bytes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


async def test_malformed_watcher_answers_are_502_with_one_log_line(
    rest_host: RestHost, http: Session
) -> None:
    alice = await make_user(rest_host, "alice")
    program = await program_on_a_free_port(http, rest_host, alice)
    url = f"{rest_host.url}/programs/{program['program_id']}/watcher/status"
    before = rest_host.server.stderr()
    for name, answer in MALFORMED.items():
        async with answering(target_port(program), answer):
            status, body, _ = await call(http, "GET", url, alice.headers)
        assert status == 502, (name, body)
        assert body["error"] == "WATCHER_UNREACHABLE", (name, body)
        assert "aaaa" not in body["message"]  # nothing of the program's answer to the client
    await asyncio.sleep(0.2)
    log = rest_host.server.stderr()[len(before) :] if len(before) < 8000 else ""
    assert "Traceback" not in rest_host.server.stderr()
    if log:  # the tail is what is kept: check the lines of this test when they fit
        lines = [line for line in log.splitlines() if "WatcherAPI unreachable" in line]
        assert len(lines) == len(MALFORMED), log
        assert all(len(line) < 600 for line in lines), lines


# --- truncated and corrupt tars ----------------------------------------------------------


def tar_of(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def without_end(tar: bytes) -> bytes:
    """The archive less its end-of-archive zero blocks (and padding)."""
    return tar.rstrip(b"\0")


def header(name: str, size: int, *, corrupt: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    block = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    if corrupt:
        block[148:156] = b"0000000\0"  # a checksum that does not match
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


@pytest.mark.parametrize(
    ("case", "member"),
    [
        ("claims-1-tb-carries-none", "big.bin"),
        ("claims-1-tb-then-end-blocks", "big.bin"),
        ("data-cut-short", "half.txt"),
        ("corrupt-header", "hidden.txt"),
        ("header-cut-short", "cut.txt"),
    ],
)
async def test_a_tar_missing_a_members_data_is_400_naming_it(
    rest_host: RestHost, http: Session, case: str, member: str
) -> None:
    alice = await make_user(rest_host, "alice")
    start = padded(without_end(tar_of(("Dockerfile", b"FROM scratch\n"), ("a.txt", b"hello"))))
    body = {
        "claims-1-tb-carries-none": start + header(member, 10**12),
        "claims-1-tb-then-end-blocks": start + header(member, 10**12) + b"\0" * 1024,
        "data-cut-short": start + header(member, 5000) + b"x" * 1000,
        "corrupt-header": start + header(member, 5, corrupt=True) + padded(b"hello") + b"\0" * 1024,
        "header-cut-short": start + header(member, 5)[:300],
    }[case]
    status, answer, _ = await call(
        http,
        "POST",
        f"{rest_host.url}/programs?user_id={alice.user_id}",
        {**alice.headers, "Content-Type": "application/x-tar"},
        data=body,
    )
    assert status == 400, answer
    assert answer["field"] == f"tar member {member!r}", answer
    # The whole tar, by contrast, is taken.
    whole = tar_of(("Dockerfile", b"FROM scratch\n"), ("a.txt", b"hello"), (member, b"data"))
    status, answer, _ = await call(
        http,
        "POST",
        f"{rest_host.url}/programs?user_id={alice.user_id}",
        {**alice.headers, "Content-Type": "application/x-tar"},
        data=whole,
    )
    assert status == 201, answer


# --- no unbounded echo -------------------------------------------------------------------


async def test_a_huge_value_is_cut_in_every_message(
    rest_host: RestHost, http: Session, channel: grpc.aio.Channel
) -> None:
    alice = await make_user(rest_host, "alice")
    admin = {"Authorization": f"Bearer {rest_host.admin_token}"}
    programs = f"{rest_host.url}/programs"
    long_query = "q" * 5_000  # under the HTTP server's 8 KiB request line
    attempts = [
        ("POST", programs, alice.headers, {"user_id": HUGE, "dockerfile": "FROM scratch\n"}),
        ("POST", programs, admin, {"user_id": HUGE, "dockerfile": "FROM scratch\n"}),
        ("POST", programs, admin, {"user_id": "a", HUGE: 1}),
        (
            "POST",
            programs,
            admin,
            {"user_id": "a", "dockerfile": "FROM scratch\n", "src_files": {HUGE: "x"}},
        ),
        ("POST", programs, admin, {"user_id": "a", "resources": {HUGE: 1}}),
        ("GET", f"{programs}?user_id={long_query}", admin, None),
        ("GET", f"{programs}/{long_query}", admin, None),
        ("GET", f"{programs}/p-1/wait?state={long_query}", admin, None),
        ("GET", f"{programs}/p-1/logs?tail={long_query}", admin, None),
        ("GET", f"{programs}/p-1/logs?stream={long_query}", admin, None),
        ("GET", f"{programs}/p-1/events?resume_revision={long_query}", admin, None),
    ]
    for method, url, headers, body in attempts:
        status, answer, _ = await call(http, method, url, headers, json=body)
        assert status in (400, 403, 404), (url[:120], status, str(answer)[:300])
        text = str(answer)
        assert len(text) < MESSAGE_BOUND, (url[:120], text[:300])
    programs_stub: pb_grpc.ProgramServiceAsyncStub = pb_grpc.ProgramServiceStub(channel)
    tokens: token_grpc.TokenServiceAsyncStub = token_grpc.TokenServiceStub(channel)
    calls: list[Awaitable[Any]] = [
        programs_stub.CreateProgram(
            pb.CreateProgramRequest(user_id=HUGE, dockerfile="FROM scratch\n"),
            metadata=bearer(alice.token),
        ),
        programs_stub.CreateProgram(
            pb.CreateProgramRequest(user_id=HUGE, dockerfile="FROM scratch\n"),
            metadata=bearer(rest_host.admin_token),
        ),
        programs_stub.GetProgram(
            pb.GetProgramRequest(name=f"programs/{HUGE}"), metadata=bearer(alice.token)
        ),
        programs_stub.GetProgram(pb.GetProgramRequest(name=HUGE), metadata=bearer(alice.token)),
        tokens.RevokeToken(
            token_pb2.RevokeTokenRequest(name=f"tokens/{HUGE}"),
            metadata=bearer(rest_host.admin_token),
        ),
        tokens.CreateToken(
            token_pb2.CreateTokenRequest(user_id=HUGE), metadata=bearer(rest_host.admin_token)
        ),
    ]
    for rpc in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rpc
        code = refused.value.code()
        assert code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.NOT_FOUND,
        ), (code, (refused.value.details() or "")[:200])
        assert len(refused.value.details() or "") < MESSAGE_BOUND
        trailers = b"".join(
            value
            for _, value in (refused.value.trailing_metadata() or ())
            if isinstance(value, bytes)
        )
        assert len(trailers) < 2 * MESSAGE_BOUND


# --- one user's flood of creates -----------------------------------------------------------


async def test_one_users_flood_of_creates_is_limited_and_another_user_is_not(
    rest_host: RestHost, channel: grpc.aio.Channel
) -> None:
    flooder, other = await make_user(rest_host, "flooder"), await make_user(rest_host, "other")
    stub: pb_grpc.ProgramServiceAsyncStub = pb_grpc.ProgramServiceStub(channel)
    files = {f"d{i // 100}/f{i}": b"x" for i in range(10_000)}

    refusals: list[str] = []

    async def create(user: str, token: str, src: dict[str, bytes]) -> grpc.StatusCode | str:
        try:
            await stub.CreateProgram(
                pb.CreateProgramRequest(user_id=user, dockerfile="FROM scratch\n", src_files=src),
                metadata=bearer(token),
                timeout=120,
            )
        except grpc.aio.AioRpcError as error:
            refusals.append(error.details() or "")
            return error.code()
        return "created"

    flood = [create(flooder.user_id, flooder.token, files) for _ in range(6)]
    results = await asyncio.gather(
        *flood,
        create(other.user_id, other.token, {"a": b"b"}),
        create(other.user_id, other.token, {"a": b"c"}),
    )
    flooded, others = results[:6], results[6:]
    assert flooded.count("created") >= 1
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in flooded, flooded
    assert set(flooded) <= {"created", grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert others == ["created", "created"]
    assert all("at most 2 at a time" in refusal for refusal in refusals), refusals
    # Once the flood is over the flooder may create again.
    assert await create(flooder.user_id, flooder.token, {"a": b"d"}) == "created"
