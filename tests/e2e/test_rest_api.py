"""End-to-end: the REST shim of a real `hershy serve --runtime fake`, over real HTTP.

Every route, its answers and its errors. Tests share one Host (one per
module) and use fresh programs and user ids, so they do not depend on each
other; tests that shut a Host down start their own.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from hershy.domain.validation import SourceLimits
from hershy.entrypoints.rest import RestConfig, RestServer
from hershy.entrypoints.rest.app import RestApi
from hershy.entrypoints.rest.openapi import DOCUMENT
from hershy.entrypoints.rest.uploads import MAX_BODY_BYTES
from tests.e2e.conftest import SHUTDOWN_TIMEOUT, free_port, hershy_command
from tests.e2e.rest_support import (
    DOCKERFILE,
    RestHost,
    create_program,
    new_user,
    post_action,
    raw_request,
    ready_program,
    running_rest_server,
    wait_state,
)

Session = aiohttp.ClientSession
STATES = {
    "Created",
    "Building",
    "Starting",
    "Ready",
    "Stopping",
    "Stopped",
    "Backoff",
    "Error",
    "Deleting",
    "Deleted",
}
#: An id of the right form that was never handed out.
UNKNOWN_ID = "prog-000000000000"
LIMITS = SourceLimits()
PROXY_METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


async def get_json(http: Session, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def post_json(http: Session, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.post(url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    """One Host shared by the module's tests; its clean shutdown is checked at the end."""
    with running_rest_server(tmp_path_factory.mktemp("hershy-rest")) as host:
        yield host


def assert_error(
    status: int, body: Any, code: int, error: str | None = None, field: str | None = None
) -> None:
    """The error body every route uses: `{error, code, message}` (and `field` for bad input)."""
    assert status == code, body
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["error"], str)
    assert body["error"]
    if error is not None:
        assert body["error"] == error, body
    if field is not None:
        assert body.get("field") == field, body
        assert field in body["message"]


def is_rfc3339_utc(value: str) -> bool:
    return value.endswith("Z") and datetime.fromisoformat(value.replace("Z", "+00:00")) is not None


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return buffer.getvalue()


def file_member(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def special_member(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


# --- health and the description ------------------------------------------------


async def test_healthz_and_readyz(rest_host: RestHost, http: Session) -> None:
    assert await get_json(http, f"{rest_host.url}/healthz") == (200, {"status": "ok"})
    assert await get_json(http, f"{rest_host.url}/readyz") == (200, {"status": "ready"})


async def test_readyz_and_routes_answer_503_when_the_core_is_down(http: Session) -> None:
    """A shim whose gRPC core does not answer: not ready, and calls fail with 503."""
    server = RestServer(
        RestConfig(
            grpc_address=f"127.0.0.1:{free_port()}", http_address="127.0.0.1:0", auth_enabled=False
        )
    )
    await server.start(sync_timeout=0.1)
    try:
        base = f"http://{server.address}"
        assert await get_json(http, f"{base}/healthz") == (200, {"status": "ok"})
        status, body = await get_json(http, f"{base}/readyz")
        assert_error(status, body, 503, "CORE_NOT_SERVING")
        status, body = await get_json(http, f"{base}/programs")
        assert_error(status, body, 503, "CORE_UNAVAILABLE")
    finally:
        await server.stop()


async def test_openapi_document_is_served_and_describes_every_route(
    rest_host: RestHost, http: Session
) -> None:
    status, document = await get_json(http, f"{rest_host.url}/openapi.json")
    assert status == 200
    assert document == json.loads(json.dumps(DOCUMENT))
    assert document["openapi"].startswith("3.")
    # Every route the app serves is described, with its methods, and nothing more.
    async with grpc.aio.insecure_channel("127.0.0.1:1") as unused:
        app = RestApi(RestConfig(grpc_address="127.0.0.1:1"), unused).app()
    served: dict[str, set[str]] = {}
    for route in app.router.routes():
        assert route.resource is not None
        path = route.resource.canonical.replace("{rest}", "/{path}")
        methods = PROXY_METHODS if route.method == "*" else {route.method.lower()}
        served.setdefault(path, set()).update(methods)
    described = {path: set(operations) for path, operations in document["paths"].items()}
    assert served == described
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], (path, method)
            for code in operation["responses"]:
                assert code == "default" or 200 <= int(code) < 600, (path, method, code)


async def test_unknown_route_and_wrong_method_are_json_errors(
    rest_host: RestHost, http: Session
) -> None:
    status, body = await get_json(http, f"{rest_host.url}/no/such/route")
    assert_error(status, body, 404, "NOT_FOUND")
    async with http.put(f"{rest_host.url}/programs") as response:
        body = await response.json()
        assert_error(response.status, body, 405, "METHOD_NOT_ALLOWED")
        assert "POST" in response.headers["Allow"]


# --- create -------------------------------------------------------------------------


async def test_create_answers_201_with_the_original_keys(
    rest_host: RestHost, http: Session
) -> None:
    user = new_user()
    body = {"user_id": user, "dockerfile": DOCKERFILE, "src_files": {"run": "echo hi\n"}}
    async with http.post(f"{rest_host.url}/programs", json=body) as response:
        assert response.status == 201
        program = await response.json()
        assert response.headers["Location"] == f"/programs/{program['program_id']}"
    for key in ("program_id", "build_id", "state", "proxy_url", "created_at"):
        assert program[key], key
    assert program["user_id"] == user
    assert program["state"] == "Created"
    assert program["proxy_url"] == (
        f"http://{rest_host.http_address}/programs/{program['program_id']}/proxy"
    )
    assert is_rfc3339_utc(program["created_at"])
    assert is_rfc3339_utc(program["updated_at"])
    assert program["next_restart_at"] is None
    assert program["last_exit_code"] is None
    assert program["resources"]["memory_bytes"] > 0
    assert program["proxy_target"] == "", "the runtime places a program when it starts"
    # The same inputs give the same build id.
    again = await create_program(http, rest_host, user, {"run": "echo hi\n"})
    assert again["build_id"] == program["build_id"]
    assert again["program_id"] != program["program_id"]


async def test_proxy_url_follows_the_host_the_client_called(
    rest_host: RestHost, http: Session
) -> None:
    program = await create_program(http, rest_host, new_user())
    url = f"{rest_host.url}/programs/{program['program_id']}"
    _, seen = await get_json(http, url, headers={"Host": "hershy.example:9000"})
    assert seen["proxy_url"] == (
        f"http://hershy.example:9000/programs/{program['program_id']}/proxy"
    )
    # A Host header that is no host name is not echoed back.
    _, seen = await get_json(http, url, headers={"Host": "evil/<script>"})
    assert seen["proxy_url"].startswith(f"http://{rest_host.http_address}/")


async def test_nested_text_and_binary_files_round_trip_through_source(
    rest_host: RestHost, http: Session
) -> None:
    binary = bytes(range(256))
    body = {
        "user_id": new_user(),
        "dockerfile": DOCKERFILE,
        "src_files": {"app/main.py": "print('hi')\n", "app/lib/util.py": "x = 1\n", "é.txt": "ü"},
        "src_files_base64": {"assets/logo.bin": base64.b64encode(binary).decode()},
    }
    status, program = await post_json(http, f"{rest_host.url}/programs", json=body)
    assert status == 201, program
    status, source = await get_json(
        http, f"{rest_host.url}/programs/{program['program_id']}/source"
    )
    assert status == 200
    # Issue 13 added the original's `files` and `retrieved_at` (test_original_clients.py).
    assert is_rfc3339_utc(source.pop("retrieved_at"))
    files = source.pop("files")
    assert files.pop("Dockerfile") == DOCKERFILE
    assert files == body["src_files"]
    assert source == {
        "program_id": program["program_id"],
        "dockerfile": DOCKERFILE,
        "src_files": body["src_files"],
        "src_files_base64": body["src_files_base64"],
        "build_id": program["build_id"],
    }


async def test_create_from_a_tar_upload(rest_host: RestHost, http: Session) -> None:
    folder = special_member("./app", tarfile.DIRTYPE)
    members = [
        (file_member("./Dockerfile"), DOCKERFILE.encode()),
        (folder, None),
        (file_member("./app/run.sh"), b"#!/bin/sh\necho hi\n"),
        (file_member("app/data.bin"), b"\x00\xff\xfe"),
    ]
    user = new_user()
    async with http.post(
        f"{rest_host.url}/programs",
        params={"user_id": user},
        data=tar_of(members),
        headers={"Content-Type": "application/x-tar"},
    ) as response:
        program = await response.json()
        assert response.status == 201, program
    assert program["user_id"] == user
    _, source = await get_json(http, f"{rest_host.url}/programs/{program['program_id']}/source")
    assert source["dockerfile"] == DOCKERFILE
    assert source["src_files"] == {"app/run.sh": "#!/bin/sh\necho hi\n"}
    assert source["src_files_base64"] == {
        "app/data.bin": base64.b64encode(b"\x00\xff\xfe").decode()
    }


@pytest.mark.parametrize(
    ("member", "field_part"),
    [
        (special_member("link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (special_member("hard", tarfile.LNKTYPE, "Dockerfile"), "hard"),
        (special_member("dev", tarfile.CHRTYPE), "dev"),
        (special_member("fifo", tarfile.FIFOTYPE), "fifo"),
        (file_member("/etc/cron.d/x"), "/etc/cron.d/x"),
        (file_member("app/../../escape"), "app/../../escape"),
    ],
    ids=["symlink", "hardlink", "device", "fifo", "absolute", "dotdot"],
)
async def test_tar_upload_refuses_members_that_are_not_plain_files(
    rest_host: RestHost, http: Session, member: tarfile.TarInfo, field_part: str
) -> None:
    data = b"x" if member.type == tarfile.REGTYPE else None
    body = tar_of([(file_member("Dockerfile"), DOCKERFILE.encode()), (member, data)])
    status, answer = await post_json(
        http,
        f"{rest_host.url}/programs?user_id={new_user()}",
        data=body,
        headers={"Content-Type": "application/x-tar"},
    )
    assert_error(status, answer, 400, "INVALID_ARGUMENT", field=f"tar member {field_part!r}")


@pytest.mark.parametrize(
    ("query", "body", "field"),
    [
        ("", tar_of([(file_member("Dockerfile"), DOCKERFILE.encode())]), "user_id"),
        ("?user_id=bob", tar_of([(file_member("run"), b"x")]), "dockerfile"),
        ("?user_id=bob", b"this is not a tar archive at all" * 40, "body"),
        ("?user_id=bob", b"", "body"),
        (
            "?user_id=bob",
            tar_of([(file_member("Dockerfile"), b"A"), (file_member("./Dockerfile"), b"B")]),
            "tar member './Dockerfile'",
        ),
        (
            "?user_id=bob",
            tar_of([(file_member("Dockerfile"), b"\xff\xfe")]),
            "dockerfile",
        ),
        (
            "?user_id=bob",
            tar_of(
                [
                    (file_member("Dockerfile"), b"FROM x"),
                    (file_member("a"), b"1"),
                    (file_member("./a"), b"2"),
                ]
            ),
            "tar member './a'",
        ),
    ],
    ids=[
        "no-user",
        "no-dockerfile",
        "garbage",
        "empty",
        "two-dockerfiles",
        "binary-dockerfile",
        "duplicate",
    ],
)
async def test_tar_upload_bad_input(
    rest_host: RestHost, http: Session, query: str, body: bytes, field: str
) -> None:
    status, answer = await post_json(
        http,
        f"{rest_host.url}/programs{query}",
        data=body,
        headers={"Content-Type": "application/x-tar"},
    )
    assert_error(status, answer, 400, field=field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b"[1, 2]", "body"),
        (b'"a string"', "body"),
        (b"\xff\xfe{}", "body"),
        # Unknown top-level keys are ignored since issue 13 (test_original_clients.py).
        (b'{"user_id": 7, "dockerfile": "FROM x"}', "user_id"),
        (b'{"user_id": "a", "dockerfile": ["FROM x"]}', "dockerfile"),
        (b'{"user_id": "a", "dockerfile": "FROM x", "src_files": ["a"]}', "src_files"),
        (b'{"user_id": "a", "dockerfile": "FROM x", "src_files": {"a": 1}}', "src_files['a']"),
        (
            b'{"user_id": "a", "dockerfile": "FROM x", "src_files_base64": {"b": "%%%"}}',
            "src_files_base64['b']",
        ),
        (
            b'{"user_id": "a", "dockerfile": "FROM x", "src_files": {"c": "x"},'
            b' "src_files_base64": {"c": "eA=="}}',
            "src_files_base64['c']",
        ),
        (
            b'{"user_id": "a", "dockerfile": "FROM x", "src_files": {"d": "\\ud800"}}',
            "src_files['d']",
        ),
        (b'{"user_id": "a", "dockerfile": "FROM x", "resources": {"gpus": 1}}', "resources.gpus"),
        (
            b'{"user_id": "a", "dockerfile": "FROM x", "resources": {"pids": -1}}',
            "resources.pids",
        ),
        (
            b'{"user_id": "a", "dockerfile": "FROM x", "resources": {"pids": 1e3}}',
            "resources.pids",
        ),
        (
            b'{"user_id": "a", "dockerfile": "FROM x",'
            b' "resources": {"pids": 99999999999999999999}}',
            "resources.pids",
        ),
        # Checked by the core, named all the same:
        (b'{"user_id": "Not Valid", "dockerfile": "FROM x"}', "user_id"),
        (b'{"user_id": "a", "dockerfile": ""}', "dockerfile"),
        (
            b'{"user_id": "a", "dockerfile": "FROM x", "src_files": {"../x": "1"}}',
            "src_files['../x']",
        ),
        (
            b'{"user_id": "a", "dockerfile": "FROM x", "src_files": {"/abs": "1"}}',
            "src_files['/abs']",
        ),
        (
            b'{"user_id": "a", "dockerfile": "FROM x", "resources": {"memory_bytes": 1}}',
            "resources.memory_bytes",
        ),
    ],
)
async def test_create_bad_json_names_the_problem(
    rest_host: RestHost, http: Session, body: bytes, field: str
) -> None:
    status, answer = await post_json(
        http, f"{rest_host.url}/programs", data=body, headers={"Content-Type": "application/json"}
    )
    assert_error(status, answer, 400, "INVALID_ARGUMENT", field=field)


async def test_create_without_json_content_type_still_reads_json(
    rest_host: RestHost, http: Session
) -> None:
    """Like the original (and `curl -d`): the body is JSON whatever the Content-Type says."""
    body = json.dumps({"user_id": new_user(), "dockerfile": DOCKERFILE})
    status, answer = await post_json(
        http,
        f"{rest_host.url}/programs",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 201, answer


async def test_create_over_the_size_limits_is_413(rest_host: RestHost, http: Session) -> None:
    # One file over the core's per-file limit: the core's TooLarge, as 413.
    big = "x" * (LIMITS.max_file_bytes + 1)
    body = {"user_id": new_user(), "dockerfile": DOCKERFILE, "src_files": {"big": big}}
    status, answer = await post_json(http, f"{rest_host.url}/programs", json=body)
    assert_error(status, answer, 413, "TOO_LARGE", field="src_files['big']")
    # The whole context over the total limit, in files under the per-file one.
    part = LIMITS.max_total_bytes // 4 + 1
    files = {f"part{i}": "y" * part for i in range(4)}
    body = {"user_id": new_user(), "dockerfile": DOCKERFILE, "src_files": files}
    status, answer = await post_json(http, f"{rest_host.url}/programs", json=body)
    assert_error(status, answer, 413, "TOO_LARGE", field="src_files")


async def test_a_huge_body_is_refused_before_it_is_read(rest_host: RestHost) -> None:
    """Content-Length alone is enough for a 413: the shim does not wait for 1 GiB."""
    head = (
        f"POST /programs HTTP/1.1\r\nHost: {rest_host.http_address}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
    ).encode()
    status, body = await raw_request(rest_host.http_address, head + b"{", seconds=5)
    assert_error(status, json.loads(body), 413, "TOO_LARGE", field="body")


async def test_a_huge_chunked_body_is_cut_off_at_the_limit(
    rest_host: RestHost, http: Session
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        block = b"x" * (1 << 20)
        for _ in range(1024):  # 1 GiB if nobody stops it
            sent += len(block)
            yield block

    try:
        async with http.post(
            f"{rest_host.url}/programs",
            data=chunks(),
            headers={"Content-Type": "application/x-tar"},
            params={"user_id": "bob"},
        ) as response:
            answer = await response.json()
            assert_error(response.status, answer, 413, "TOO_LARGE", field="body")
    except aiohttp.ClientOSError:
        pass  # the shim may close the connection while we are still sending
    assert sent < MAX_BODY_BYTES + (64 << 20)  # the limit, plus what socket buffers took


# --- list ---------------------------------------------------------------------------


async def test_list_is_paginated_in_creation_order_with_the_total_count(
    rest_host: RestHost, http: Session
) -> None:
    user = new_user()
    created = [(await create_program(http, rest_host, user))["program_id"] for _ in range(5)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"user_id": user, "page_size": "2", "page_token": token}
        status, page = await get_json(http, f"{rest_host.url}/programs", params=params)
        assert status == 200, page
        assert page["count"] == 5
        assert len(page["programs"]) <= 2
        seen += [program["program_id"] for program in page["programs"]]
        pages += 1
        token = page["next_page_token"]
        if not token:
            break
    assert seen == created
    assert pages == 3
    # The original's shape: no parameters at all.
    status, everything = await get_json(http, f"{rest_host.url}/programs")
    assert status == 200
    assert set(everything) >= {"programs", "count"}
    assert everything["count"] >= 5


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page_size=abc", "page_size"),
        ("page_size=-1", "page_size"),
        ("page_size=1001", "page_size"),
        ("page_token=bogus", "page_token"),
        ("user_id=NOT%20VALID", "user_id"),
    ],
)
async def test_list_bad_parameters(
    rest_host: RestHost, http: Session, query: str, field: str
) -> None:
    status, body = await get_json(http, f"{rest_host.url}/programs?{query}")
    assert_error(status, body, 400, "INVALID_ARGUMENT", field=field)


# --- get, delete --------------------------------------------------------------------


async def test_get_one_program(rest_host: RestHost, http: Session) -> None:
    program = await create_program(http, rest_host, new_user())
    status, again = await get_json(http, f"{rest_host.url}/programs/{program['program_id']}")
    assert status == 200
    assert again == program


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/start"),
        ("POST", "/stop"),
        ("POST", "/restart"),
        ("GET", "/wait"),
        ("GET", "/logs"),
        ("GET", "/source"),
        ("GET", "/events"),
    ],
)
async def test_every_program_route_answers_404_and_400(
    rest_host: RestHost, http: Session, method: str, suffix: str
) -> None:
    async with http.request(method, f"{rest_host.url}/programs/{UNKNOWN_ID}{suffix}") as response:
        assert_error(response.status, await response.json(), 404, "PROGRAM_NOT_FOUND")
    async with http.request(method, f"{rest_host.url}/programs/Bad_Id{suffix}") as response:
        assert_error(response.status, await response.json(), 400, field="program_id")


async def test_delete_really_deletes(rest_host: RestHost, http: Session) -> None:
    user = new_user()
    program = await ready_program(http, rest_host, user)
    program_id = program["program_id"]
    async with http.delete(f"{rest_host.url}/programs/{program_id}") as response:
        assert response.status == 200
        gone = await response.json()
    assert gone["state"] == "Deleted"
    assert gone["program_id"] == program_id
    for suffix in ("", "/source", "/logs"):
        status, body = await get_json(http, f"{rest_host.url}/programs/{program_id}{suffix}")
        assert_error(status, body, 404, "PROGRAM_NOT_FOUND")
    _, listed = await get_json(http, f"{rest_host.url}/programs", params={"user_id": user})
    assert listed == {"programs": [], "count": 0, "next_page_token": ""}
    async with http.delete(f"{rest_host.url}/programs/{program_id}") as response:
        assert_error(response.status, await response.json(), 404, "PROGRAM_NOT_FOUND")


# --- lifecycle, wait -----------------------------------------------------------------


async def test_start_stop_restart_and_wrong_states(rest_host: RestHost, http: Session) -> None:
    program = await create_program(http, rest_host, new_user())
    program_id = program["program_id"]
    # Issue 13: a stop on a program at rest is a 200 that changes nothing (was 409).
    status, body = await post_action(http, rest_host, program_id, "stop")
    assert status == 200
    assert body["state"] == "Created"
    assert "Created" in body["message"]

    status, body = await post_action(http, rest_host, program_id, "start")
    assert status == 200
    assert body["state"] in STATES
    assert body["run"] == 1
    ready = await wait_state(http, rest_host, program_id, "ready")
    assert ready["state"] == "Ready"
    assert ready["container_id"]

    status, body = await post_action(http, rest_host, program_id, "start")
    assert_error(status, body, 409, "WRONG_STATE")
    assert body["state"] == "Ready"
    assert "READY" in body["message"]

    status, body = await post_action(http, rest_host, program_id, "stop")
    assert status == 200
    assert body["state"] == "Stopping"
    stopped = await wait_state(http, rest_host, program_id, "Stopped")
    assert stopped["container_id"] == ""

    status, body = await post_action(http, rest_host, program_id, "restart")
    assert status == 200
    ready = await wait_state(http, rest_host, program_id, "READY")
    assert ready["run"] == 2


@pytest.mark.parametrize("spelling", ["ready", "Ready", "READY", "STATE_READY", "state_ready"])
async def test_wait_takes_any_spelling_of_a_state(
    rest_host: RestHost, http: Session, spelling: str
) -> None:
    program = await ready_program(http, rest_host, new_user())
    answer = await wait_state(http, rest_host, program["program_id"], spelling)
    assert answer["state"] == "Ready"


async def test_wait_defaults_to_ready(rest_host: RestHost, http: Session) -> None:
    program = await ready_program(http, rest_host, new_user())
    status, body = await get_json(http, f"{rest_host.url}/programs/{program['program_id']}/wait")
    assert status == 200
    assert body["state"] == "Ready"


async def test_wait_times_out_with_408_naming_the_state(rest_host: RestHost, http: Session) -> None:
    program = await create_program(http, rest_host, new_user())
    started = asyncio.get_running_loop().time()
    status, body = await get_json(
        http,
        f"{rest_host.url}/programs/{program['program_id']}/wait",
        params={"state": "ready", "timeout": "0.3"},
    )
    assert asyncio.get_running_loop().time() - started < 3
    assert_error(status, body, 408, "TIMEOUT")
    assert "CREATED" in body["message"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("state=sleeping", "state"),
        ("state=unspecified", "state"),
        ("timeout=abc", "timeout"),
        ("timeout=0", "timeout"),
        ("timeout=-1", "timeout"),
        ("timeout=nan", "timeout"),
        ("timeout=inf", "timeout"),
        ("timeout=3601", "timeout"),
    ],
)
async def test_wait_bad_parameters(
    rest_host: RestHost, http: Session, query: str, field: str
) -> None:
    program = await create_program(http, rest_host, new_user())
    status, body = await get_json(
        http, f"{rest_host.url}/programs/{program['program_id']}/wait?{query}"
    )
    assert_error(status, body, 400, "INVALID_ARGUMENT", field=field)


# --- logs -----------------------------------------------------------------------------


async def read_ndjson(http: Session, url: str, **params: str) -> list[dict[str, Any]]:
    async with http.get(url, params={"format": "ndjson", **params}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "application/x-ndjson"
        text = await response.text()
    return [json.loads(line) for line in text.splitlines()]


async def test_logs_tell_the_streams_apart(rest_host: RestHost, http: Session) -> None:
    program = await ready_program(http, rest_host, new_user())
    url = f"{rest_host.url}/programs/{program['program_id']}/logs"
    lines = await read_ndjson(http, url)
    assert {line["stream"] for line in lines} == {"build", "stdout", "stderr", "host"}
    for line in lines:
        assert set(line) == {"time", "stream", "run", "line"}
        assert is_rfc3339_utc(line["time"])
    assert {"stream": "stdout", "run": 1, "line": "fake program: ready"}.items() <= next(
        line for line in lines if line["stream"] == "stdout"
    ).items()
    only_out = await read_ndjson(http, url, stream="stdout")
    assert only_out
    assert {line["stream"] for line in only_out} == {"stdout"}
    two = await read_ndjson(http, url, stream="stderr,build")
    assert {line["stream"] for line in two} == {"stderr", "build"}
    last = await read_ndjson(http, url, tail="1")
    assert last == lines[-1:]
    assert await read_ndjson(http, url, tail="0") == []


async def test_logs_follow_streams_new_lines(rest_host: RestHost, http: Session) -> None:
    program = await ready_program(http, rest_host, new_user())
    program_id = program["program_id"]
    url = f"{rest_host.url}/programs/{program_id}/logs"
    async with http.get(url, params={"follow": "1", "tail": "0", "stream": "host"}) as response:
        assert response.status == 200
        await post_action(http, rest_host, program_id, "stop")
        lines: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while not any("now STOPPED" in line["line"] for line in lines):
                lines.append(json.loads(await response.content.readline()))
    assert [line["stream"] for line in lines] == ["host"] * len(lines)
    assert "StopRequested: now STOPPING" in lines[0]["line"]


async def test_logs_follow_ends_when_the_program_is_deleted(
    rest_host: RestHost, http: Session
) -> None:
    program = await create_program(http, rest_host, new_user())
    url = f"{rest_host.url}/programs/{program['program_id']}/logs?follow=true"
    async with http.get(url) as response:
        assert response.status == 200
        first = json.loads(await response.content.readline())
        assert first["line"] == "ProgramCreated: now CREATED"
        async with http.delete(f"{rest_host.url}/programs/{program['program_id']}") as deleted:
            assert deleted.status == 200
        async with asyncio.timeout(5):
            rest = await response.content.read()
    assert b"DeleteRequested" in rest


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("stream=stdout,bogus", "stream"),
        ("tail=-1", "tail"),
        ("tail=ten", "tail"),
        ("follow=maybe", "follow"),
    ],
)
async def test_logs_bad_parameters(
    rest_host: RestHost, http: Session, query: str, field: str
) -> None:
    program = await create_program(http, rest_host, new_user())
    status, body = await get_json(
        http, f"{rest_host.url}/programs/{program['program_id']}/logs?{query}"
    )
    assert_error(status, body, 400, "INVALID_ARGUMENT", field=field)


# --- events (Server-Sent Events) ----------------------------------------------------------


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """The next `count` events (comments skipped), as {id, event, data}."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async with asyncio.timeout(5):
        while len(events) < count:
            line = (await response.content.readline()).decode()
            assert line, f"stream ended after {events}"
            line = line.rstrip("\n")
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif line.startswith(":"):
                continue
            else:
                key, _, value = line.partition(": ")
                current[key] = json.loads(value) if key == "data" else value
    return events


async def test_program_events_are_a_snapshot_then_every_change(
    rest_host: RestHost, http: Session
) -> None:
    program = await create_program(http, rest_host, new_user())
    program_id = program["program_id"]
    async with http.get(f"{rest_host.url}/programs/{program_id}/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        snapshot, synced = await read_events(response, 2)
        assert snapshot["event"] == "snapshot"
        assert "id" not in snapshot
        assert snapshot["data"]["program_id"] == program_id
        assert snapshot["data"]["state"] == "Created"
        assert synced["event"] == "synced"
        assert int(synced["id"]) == synced["data"]["revision"] >= program["revision"]
        await post_action(http, rest_host, program_id, "start")
        changes = await read_events(response, 4)  # Building, Starting, Starting, Ready
    assert [change["event"] for change in changes] == ["updated"] * 4
    assert [change["data"]["state"] for change in changes][-1] == "Ready"
    revisions = [int(change["id"]) for change in changes]
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == 4
    assert all(change["data"]["revision"] == int(change["id"]) for change in changes)


async def test_all_events_show_creation_and_deletion(rest_host: RestHost, http: Session) -> None:
    async with http.get(f"{rest_host.url}/events") as response:
        assert response.status == 200
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while not events or events[-1]["event"] != "synced":
                events += await read_events(response, 1)
        assert all(event["event"] == "snapshot" for event in events[:-1])
        program = await create_program(http, rest_host, new_user())
        async with http.delete(f"{rest_host.url}/programs/{program['program_id']}") as deleted:
            assert deleted.status == 200
        mine: list[dict[str, Any]] = []
        while not mine or mine[-1]["event"] != "deleted":
            event = (await read_events(response, 1))[0]
            if event["data"].get("program_id") == program["program_id"]:
                mine.append(event)
    assert mine[0]["event"] == "created"
    assert mine[-1]["data"]["state"] == "Deleted"


async def test_events_resume_after_a_revision(rest_host: RestHost, http: Session) -> None:
    program = await create_program(http, rest_host, new_user())
    program_id = program["program_id"]
    url = f"{rest_host.url}/programs/{program_id}/events"
    await post_action(http, rest_host, program_id, "start")
    await wait_state(http, rest_host, program_id, "ready")
    # Resume from the creation: every change since, no snapshot.
    async with http.get(url, params={"resume_revision": str(program["revision"])}) as response:
        assert response.status == 200
        replay = await read_events(response, 4)
    assert [event["event"] for event in replay] == ["updated"] * 4
    assert replay[-1]["data"]["state"] == "Ready"
    # Last-Event-ID (a reconnecting EventSource) wins over the query.
    third = replay[2]["id"]
    async with http.get(
        url, params={"resume_revision": str(program["revision"])}, headers={"Last-Event-ID": third}
    ) as response:
        assert response.status == 200
        (after,) = await read_events(response, 1)
    assert after["id"] == replay[3]["id"]


async def test_events_resume_from_the_future_is_410(rest_host: RestHost, http: Session) -> None:
    status, body = await get_json(http, f"{rest_host.url}/events?resume_revision=999999999")
    assert_error(status, body, 410, "REVISION_COMPACTED")
    assert "oldest_revision" in body


@pytest.mark.parametrize(
    ("query", "headers", "field"),
    [
        ("resume_revision=abc", {}, "resume_revision"),
        ("resume_revision=-5", {}, "resume_revision"),
        ("", {"Last-Event-ID": "x1"}, "Last-Event-ID"),
    ],
)
async def test_events_bad_resume(
    rest_host: RestHost, http: Session, query: str, headers: dict[str, str], field: str
) -> None:
    status, body = await get_json(http, f"{rest_host.url}/events?{query}", headers=headers)
    assert_error(status, body, 400, "INVALID_ARGUMENT", field=field)


async def test_events_send_heartbeats_while_idle(rest_host: RestHost, http: Session) -> None:
    """A shim of our own (same code, short heartbeat) on the shared Host's core."""
    server = RestServer(
        RestConfig(
            grpc_address=rest_host.grpc_address,
            http_address="127.0.0.1:0",
            auth_enabled=False,
            heartbeat_seconds=0.1,
        )
    )
    await server.start()
    try:
        program = await create_program(http, rest_host, new_user())
        url = f"http://{server.address}/programs/{program['program_id']}/events"
        async with http.get(url) as response:
            await read_events(response, 2)
            async with asyncio.timeout(3):
                comments = 0
                while comments < 3:
                    line = await response.content.readline()
                    comments += line.startswith(b":")
    finally:
        await server.stop()


# --- shutdown ----------------------------------------------------------------------------


async def test_sigterm_ends_open_streams_and_exits_cleanly(tmp_path: Path, http: Session) -> None:
    with running_rest_server(tmp_path / "own") as host:
        program = await create_program(http, host, new_user())
        url = f"{host.url}/programs/{program['program_id']}"
        async with (
            http.get(f"{host.url}/events") as events,
            http.get(f"{url}/logs", params={"follow": "1"}) as logs,
        ):
            assert events.status == 200
            assert logs.status == 200
            await read_events(events, 2)
            started = asyncio.get_running_loop().time()
            host.server.sigterm()
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await events.content.read()  # both streams end (cleanly: no error)
                await logs.content.read()
            assert asyncio.get_running_loop().time() - started < SHUTDOWN_TIMEOUT
        code = await asyncio.to_thread(host.server.process.wait, SHUTDOWN_TIMEOUT)
        assert code == 0, host.server.stderr()


def test_a_taken_http_address_stops_the_host(tmp_path: Path) -> None:
    """A Host that cannot serve its REST API does not start half-way."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [
                *hershy_command(),
                "serve",
                "--runtime",
                "fake",
                "--data-dir",
                str(tmp_path / "data"),
                "--grpc-addr",
                f"127.0.0.1:{free_port()}",
                "--http-addr",
                address,
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert result.returncode != 0
    assert b"address already in use" in result.stderr.lower(), result.stderr[-2000:]
