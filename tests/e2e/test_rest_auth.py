"""End-to-end: tokens through the REST shim and the proxy, on a Host with tokens on.

The core decides who may do what; these tests check that the shim carries the
`Authorization` header to it, maps its answers (401, 403, 404 for another
user's program), and that the proxy, which answers from its cache, lets
nobody reach a program that is not theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest

from hershy.entrypoints.rest import RestConfig, RestServer
from hershy.v1 import token_pb2
from hershy.v1 import token_pb2_grpc as token_grpc
from tests.e2e.rest_support import (
    DOCKERFILE,
    RestHost,
    fake_watcher,
    new_user,
    port_is_free,
    running_rest_server,
    target_port,
)

Session = aiohttp.ClientSession


@dataclass
class User:
    user_id: str
    token: str
    token_name: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-auth"), auth=True) as host:
        yield host


async def make_user(host: RestHost, prefix: str) -> User:
    """A user and their token, made with the admin's token over gRPC (REST has no token routes)."""
    user_id = new_user(prefix)
    async with grpc.aio.insecure_channel(host.grpc_address) as channel:
        tokens: token_grpc.TokenServiceAsyncStub = token_grpc.TokenServiceStub(channel)
        token = await tokens.CreateToken(
            token_pb2.CreateTokenRequest(user_id=user_id),
            metadata=(("authorization", f"Bearer {host.admin_token}"),),
            timeout=10,
        )
    return User(user_id, token.secret, token.name)


async def revoke(host: RestHost, user: User) -> None:
    async with grpc.aio.insecure_channel(host.grpc_address) as channel:
        tokens: token_grpc.TokenServiceAsyncStub = token_grpc.TokenServiceStub(channel)
        await tokens.RevokeToken(
            token_pb2.RevokeTokenRequest(name=user.token_name),
            metadata=(("authorization", f"Bearer {host.admin_token}"),),
            timeout=10,
        )


async def call(
    http: Session, method: str, url: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.request(method, url, headers=headers, **kwargs) as response:
        return response.status, await response.json(content_type=None), response


async def ready_program_of(http: Session, host: RestHost, user: User) -> dict[str, Any]:
    body = {"user_id": user.user_id, "dockerfile": DOCKERFILE}
    status, program, _ = await call(http, "POST", f"{host.url}/programs", user.headers, json=body)
    assert status == 201, program
    url = f"{host.url}/programs/{program['program_id']}"
    status, _, _ = await call(http, "POST", f"{url}/start", user.headers)
    assert status == 200
    status, ready, _ = await call(http, "GET", f"{url}/wait", user.headers)
    assert status == 200, ready
    return dict(ready)


async def program_on_a_free_port(http: Session, host: RestHost, user: User) -> dict[str, Any]:
    """A Ready program of the user's whose WatcherAPI port nothing else holds on this machine
    (every Host hands out ports from 19001 up; others may run here)."""
    for _ in range(50):
        program = await ready_program_of(http, host, user)
        if port_is_free(target_port(program)):
            return program
    pytest.fail("no free WatcherAPI port in 50 programs")


async def test_calls_without_a_good_token_are_401(rest_host: RestHost, http: Session) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer hershy_not-a-real-token"},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    ):
        status, body, response = await call(http, "GET", f"{rest_host.url}/programs", headers)
        assert status == 401, (headers, body)
        assert body["error"] == "UNAUTHENTICATED"
        assert body["code"] == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # Health and the API description need no token.
    for path in ("/healthz", "/readyz", "/openapi.json"):
        status, _, _ = await call(http, "GET", f"{rest_host.url}{path}")
        assert status == 200, path


async def test_users_see_only_their_own_programs(rest_host: RestHost, http: Session) -> None:
    alice, bob = await make_user(rest_host, "alice"), await make_user(rest_host, "bob")
    body = {"user_id": alice.user_id, "dockerfile": DOCKERFILE}
    status, program, _ = await call(
        http, "POST", f"{rest_host.url}/programs", alice.headers, json=body
    )
    assert status == 201, program
    url = f"{rest_host.url}/programs/{program['program_id']}"
    status, mine, _ = await call(http, "GET", url, alice.headers)
    assert status == 200
    assert mine["user_id"] == alice.user_id
    # Bob: as if it did not exist, on every route.
    for method, suffix in (("GET", ""), ("POST", "/start"), ("GET", "/source"), ("DELETE", "")):
        status, answer, _ = await call(http, method, f"{url}{suffix}", bob.headers)
        assert status == 404, (method, suffix, answer)
        assert answer["error"] == "PROGRAM_NOT_FOUND"
    status, listed, _ = await call(http, "GET", f"{rest_host.url}/programs", bob.headers)
    assert status == 200
    assert program["program_id"] not in [p["program_id"] for p in listed["programs"]]
    # Bob may not create programs for Alice.
    status, answer, _ = await call(
        http, "POST", f"{rest_host.url}/programs", bob.headers, json=body
    )
    assert status == 403, answer
    assert answer["error"] == "PERMISSION_DENIED"
    # The admin sees everything.
    admin = {"Authorization": f"Bearer {rest_host.admin_token}"}
    status, seen, _ = await call(http, "GET", url, admin)
    assert status == 200
    assert seen["program_id"] == program["program_id"]
    # Alice deletes her own, and the DELETE waits until it is gone.
    status, gone, _ = await call(http, "DELETE", url, alice.headers)
    assert status == 200, gone
    assert gone["state"] == "Deleted"


async def test_the_proxy_lets_only_the_owner_and_the_admin_through(
    rest_host: RestHost, http: Session
) -> None:
    alice, bob = await make_user(rest_host, "alice"), await make_user(rest_host, "bob")
    program = await ready_program_of(http, rest_host, alice)
    url = f"{rest_host.url}/programs/{program['program_id']}/watcher/echo"
    async with fake_watcher(target_port(program)) as watcher:
        status, echo, _ = await call(http, "GET", url, alice.headers)
        assert status == 200, echo
        # The token is the Host's: the program never sees it.
        assert "authorization" not in echo["headers"]
        status, _, _ = await call(
            http, "GET", url, {"Authorization": f"Bearer {rest_host.admin_token}"}
        )
        assert status == 200
        for headers, code in (
            (bob.headers, 404),
            ({}, 401),
            ({"Authorization": "Bearer hershy_wrong"}, 401),
        ):
            status, body, _ = await call(http, "GET", url, headers)
            assert status == code, (headers, body)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url.replace("http://", "ws://"), headers=headers)
            assert refused.value.status == code
        assert len(watcher.seen) == 2  # Alice's and the admin's, nobody else's


async def test_a_revoked_token_stops_opening_the_proxy(rest_host: RestHost, http: Session) -> None:
    """A shim of our own that trusts a token's answer for 0.2 s (the Host's own: 5 s)."""
    alice = await make_user(rest_host, "alice")
    program = await ready_program_of(http, rest_host, alice)
    server = RestServer(
        RestConfig(
            grpc_address=rest_host.grpc_address,
            http_address="127.0.0.1:0",
            service_token=rest_host.admin_token,
            principal_ttl_seconds=0.2,
        )
    )
    await server.start()
    try:
        url = f"http://{server.address}/programs/{program['program_id']}/watcher/status"
        async with fake_watcher(target_port(program)):
            status, _, _ = await call(http, "GET", url, alice.headers)
            assert status == 200
            await revoke(rest_host, alice)
            await asyncio.sleep(0.3)
            status, body, _ = await call(http, "GET", url, alice.headers)
            assert status == 401, body
    finally:
        await server.stop()


async def test_events_show_a_user_only_their_programs(rest_host: RestHost, http: Session) -> None:
    alice, bob = await make_user(rest_host, "alice"), await make_user(rest_host, "bob")
    theirs = await ready_program_of(http, rest_host, alice)
    async with http.get(f"{rest_host.url}/events", headers=bob.headers) as response:
        assert response.status == 200
        text = b""
        async with asyncio.timeout(5):
            while b"event: synced" not in text:
                text += await response.content.readany()
    assert theirs["program_id"].encode() not in text
    status, body, _ = await call(http, "GET", f"{rest_host.url}/events")
    assert status == 401, body


async def status_of(
    http: Session, method: str, url: str, headers: dict[str, str]
) -> tuple[int, str]:
    """The status and the body as text (some routes answer NDJSON)."""
    async with http.request(method, url, headers=headers) as response:
        return response.status, await response.text()


async def test_every_route_with_every_kind_of_token(rest_host: RestHost, http: Session) -> None:
    """No token, a wrong one, a revoked one: 401. Another user's: 404 (no hint). The owner's and
    the admin's: through (2xx, or the route's own answer: 409 for a second start; from the
    proxy 502 where nothing listens on the fake program's port, 503 once it is stopped)."""
    owner, other = await make_user(rest_host, "owner"), await make_user(rest_host, "other")
    gone = await make_user(rest_host, "gone")
    await revoke(rest_host, gone)
    program = await ready_program_of(http, rest_host, owner)
    base = f"{rest_host.url}/programs/{program['program_id']}"
    routes = [
        ("GET", base),
        ("GET", f"{base}/source"),
        ("GET", f"{base}/logs"),
        ("GET", f"{base}/wait?state=ready&timeout=5"),
        ("POST", f"{base}/start"),
        ("POST", f"{base}/restart"),
        ("POST", f"{base}/stop"),
        ("GET", f"{base}/watcher/status"),
        ("GET", f"{base}/proxy/watcher/status"),
    ]
    admin = {"Authorization": f"Bearer {rest_host.admin_token}"}
    refused = [
        ({}, 401),
        ({"Authorization": "Bearer hershy_wrong-token-wrong-token"}, 401),
        (gone.headers, 401),
        (other.headers, 404),
    ]
    for method, url in routes:
        for headers, expected in refused:
            status, body = await status_of(http, method, url, headers)
            assert status == expected, (method, url, headers, body)
        for caller in (owner.headers, admin):
            status, body = await status_of(http, method, url, caller)
            assert status in (200, 409, 502, 503), (method, url, status, body)
    # Programs and events are listed per user; create is refused without a good token.
    for headers, expected in refused[:3]:
        status, _, _ = await call(http, "GET", f"{rest_host.url}/programs", headers)
        assert status == expected
        status, _, _ = await call(
            http,
            "POST",
            f"{rest_host.url}/programs",
            headers,
            json={"user_id": owner.user_id, "dockerfile": DOCKERFILE},
        )
        assert status == expected
    status, _, _ = await call(
        http,
        "POST",
        f"{rest_host.url}/programs",
        other.headers,
        json={"user_id": owner.user_id, "dockerfile": DOCKERFILE},
    )
    assert status == 403
    status, listed, _ = await call(http, "GET", f"{rest_host.url}/programs", other.headers)
    assert status == 200
    assert all(p["user_id"] == other.user_id for p in listed["programs"])
    # Delete last: another user's token cannot, the owner's can.
    for headers, expected in refused:
        status, _, _ = await call(http, "DELETE", base, headers)
        assert status == expected
    status, _, _ = await call(http, "DELETE", base, owner.headers)
    assert status in (200, 202)
