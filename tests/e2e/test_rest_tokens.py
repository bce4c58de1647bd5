"""End-to-end: the REST token routes (`/whoami`, `/tokens`) of a real `hershy serve`.

The dashboard's sign-in and its token page use them; the core decides, as on
gRPC: any token may ask who it is, only the admin's lists, creates and revokes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from tests.e2e.rest_support import RestHost, new_user, running_rest_server


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-rest-tokens"), auth=True) as host:
        yield host


async def call(
    http: aiohttp.ClientSession,
    host: RestHost,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, f"{host.url}{path}", json=body, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def test_whoami_for_the_admin_and_for_a_user(
    host: RestHost, http: aiohttp.ClientSession
) -> None:
    status, me, _ = await call(http, host, "GET", "/whoami", host.admin_token)
    assert (status, me) == (200, {"user_id": "admin", "admin": True})
    user = new_user()
    status, made, headers = await call(
        http, host, "POST", "/tokens", host.admin_token, {"user_id": user}
    )
    assert status == 201, made
    assert headers["Cache-Control"] == "no-store"
    assert made["secret"].startswith("hershy_")
    assert made["user_id"] == user
    assert made["token_id"]
    assert made["revoked_at"] is None
    assert made["admin"] is False
    status, me, _ = await call(http, host, "GET", "/whoami", made["secret"])
    assert (status, me) == (200, {"user_id": user, "admin": False})


async def test_list_never_shows_a_secret_and_revoke_ends_a_token(
    host: RestHost, http: aiohttp.ClientSession
) -> None:
    user = new_user()
    _, made, _ = await call(http, host, "POST", "/tokens", host.admin_token, {"user_id": user})
    status, listed, _ = await call(http, host, "GET", "/tokens", host.admin_token)
    assert status == 200
    mine = [token for token in listed["tokens"] if token["token_id"] == made["token_id"]]
    assert mine
    assert "secret" not in mine[0]
    assert made["secret"] not in str(listed)
    status, revoked, _ = await call(
        http, host, "DELETE", f"/tokens/{made['token_id']}", host.admin_token
    )
    assert status == 200
    assert revoked["revoked_at"] is not None
    status, body, _ = await call(http, host, "GET", "/whoami", made["secret"])
    assert status == 401
    assert body["error"] == "UNAUTHENTICATED"


async def test_a_users_token_may_not_manage_tokens(
    host: RestHost, http: aiohttp.ClientSession
) -> None:
    _, made, _ = await call(
        http, host, "POST", "/tokens", host.admin_token, {"user_id": new_user()}
    )
    user_token = made["secret"]
    for method, path, body in (
        ("GET", "/tokens", None),
        ("POST", "/tokens", {"user_id": "someone-else"}),
        ("DELETE", f"/tokens/{made['token_id']}", None),
    ):
        status, answer, _ = await call(http, host, method, path, user_token, body)
        assert status == 403, (method, path, answer)
        assert answer["error"] == "PERMISSION_DENIED"
    status, _, _ = await call(http, host, "GET", "/whoami", user_token)
    assert status == 200  # the refused revoke did nothing


@pytest.mark.parametrize(
    "body", [None, {}, {"user_id": 7}, ["user_id"], {"user_id": "Not Valid"}, {"user_id": "admin"}]
)
async def test_bad_create_bodies_are_400(
    host: RestHost, http: aiohttp.ClientSession, body: Any
) -> None:
    status, answer, _ = await call(http, host, "POST", "/tokens", host.admin_token, body)
    assert status == 400, answer
    assert answer["error"] == "INVALID_ARGUMENT"


async def test_no_token_is_401_and_unknown_token_id_404(
    host: RestHost, http: aiohttp.ClientSession
) -> None:
    for method, path in (("GET", "/whoami"), ("GET", "/tokens")):
        status, answer, _ = await call(http, host, method, path, None)
        assert status == 401, answer
    status, answer, _ = await call(http, host, "DELETE", "/tokens/tok-nope", host.admin_token)
    assert status == 404, answer
