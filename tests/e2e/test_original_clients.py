"""Issue 13: the original system's clients work unchanged against Hershy's REST shim.

Each test replays what one of the original's clients did (its web UI's calls,
its shell scripts' `curl | grep -o`, `${proxy_url}/watcher/status`) against a
real `hershy serve --runtime fake` over real HTTP, and checks the answer in
the shape that client reads. One test per row of the compatibility table in
docs/rest.md; the hostile variants check that no defence was given up for it.
An Error program needs an injected build failure: that one Host runs
in-process with the same code (bootstrap.running_host).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from multidict import CIMultiDictProxy

from hershy.adapters.fake_runtime import FakeBehaviour
from hershy.bootstrap import HostConfig, Runtime, running_host
from hershy.entrypoints.rest import app as rest_app
from hershy.entrypoints.rest.app import JSON_LOG_LINES
from hershy.entrypoints.rest.uploads import MAX_IGNORED_KEY_CHARS, MAX_IGNORED_KEYS_NAMED
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from hershy.v1 import token_pb2, token_pb2_grpc
from tests.e2e.conftest import free_port
from tests.e2e.rest_support import (
    DOCKERFILE,
    FakeWatcher,
    RestHost,
    create_program,
    new_user,
    post_action,
    program_with_watcher,
    raw_get,
    raw_request,
    ready_program,
    running_rest_server,
    wait_state,
)

Session = aiohttp.ClientSession
ROOT = Path(__file__).resolve().parents[2]
#: What the original's deploy scripts ran on every answer.
GREP_PROGRAM_ID = re.compile(r'"program_id":"[^"]*"')


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    """`hershy serve --runtime fake --no-auth`, as the issue's reporter ran it."""
    with running_rest_server(tmp_path_factory.mktemp("hershy-original")) as host:
        yield host


@pytest.fixture(scope="module")
def auth_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-original-auth"), auth=True) as host:
        yield host


async def raw(
    http: Session, method: str, url: str, **kwargs: Any
) -> tuple[int, CIMultiDictProxy[str], str]:
    """Status, headers and the body exactly as sent (what `curl -s` shows a script)."""
    async with http.request(method, url, **kwargs) as response:
        return response.status, response.headers, await response.text()


def grep_o(pattern: str, text: str) -> list[str]:
    """`grep -o PATTERN`: every match, as the original's scripts extracted fields."""
    return re.findall(pattern, text)


def field_of(key: str, text: str) -> str:
    """`grep -o '"key":"[^"]*"' | cut -d'"' -f4`: the first match's value, or ''."""
    found = grep_o(f'"{key}":"[^"]*"', text)
    return found[0].split('"')[3] if found else ""


# --- GET /programs/{id}/source --------------------------------------------------------------


async def test_source_has_the_originals_files_and_retrieved_at(
    rest_host: RestHost, http: Session
) -> None:
    """The original UI's program page reads `files` (name -> content) and `retrieved_at`."""
    files = {"main.py": "print('hi')\n", "lib/util.py": "x = 1\n"}
    body = {
        "user_id": new_user(),
        "dockerfile": DOCKERFILE,
        "src_files": files,
        "src_files_base64": {"blob.bin": "//79"},  # not UTF-8: not text, not in `files`
    }
    async with http.post(f"{rest_host.url}/programs", json=body) as response:
        assert response.status == 201
        program = await response.json()
    status, _, text = await raw(
        http, "GET", f"{rest_host.url}/programs/{program['program_id']}/source"
    )
    assert status == 200, text
    source = json.loads(text)
    assert source["files"] == {"Dockerfile": DOCKERFILE, **files}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", source["retrieved_at"])
    assert source["program_id"] == program["program_id"]
    # Hershy's own keys are still there, unchanged in meaning.
    assert source["dockerfile"] == DOCKERFILE
    assert source["src_files"] == files
    assert source["src_files_base64"] == {"blob.bin": "//79"}


# --- GET /programs/{id}/logs ----------------------------------------------------------------


async def ndjson_lines(http: Session, url: str, **params: str) -> list[dict[str, Any]]:
    async with http.get(url, params={"format": "ndjson", **params}) as response:
        assert response.status == 200
        return [json.loads(line) for line in (await response.text()).splitlines()]


async def test_logs_default_is_the_originals_json_of_the_last_200_lines(
    rest_host: RestHost, http: Session
) -> None:
    """The original UI's "Signals & Logs" tab: `{program_id, container_id, logs, timestamp}`."""
    program = await ready_program(http, rest_host, new_user())
    program_id = program["program_id"]
    url = f"{rest_host.url}/programs/{program_id}/logs"
    # More than 200 lines, so "the last 200" is tested, not "all of them".
    for _ in range(60):
        if len(await ndjson_lines(http, url)) > JSON_LOG_LINES + 5:
            break
        status, answer = await post_action(http, rest_host, program_id, "restart")
        assert status == 200, answer
        await wait_state(http, rest_host, program_id, "ready")
    everything = await ndjson_lines(http, url)
    assert len(everything) > JSON_LOG_LINES
    current = await wait_state(http, rest_host, program_id, "ready")

    async with http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        answer = await response.json()
    assert set(answer) >= {"program_id", "container_id", "logs", "timestamp"}
    assert answer["program_id"] == program_id
    assert answer["container_id"] == current["container_id"] != ""
    assert isinstance(answer["logs"], str)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", answer["timestamp"])
    lines = answer["logs"].splitlines()
    assert len(lines) == answer["lines"] == JSON_LOG_LINES
    assert lines == [entry["line"] for entry in everything[-JSON_LOG_LINES:]]
    assert answer["logs"].endswith("\n")


async def test_logs_json_takes_tail_and_stream(rest_host: RestHost, http: Session) -> None:
    program = await ready_program(http, rest_host, new_user())
    url = f"{rest_host.url}/programs/{program['program_id']}/logs"
    async with http.get(url, params={"tail": "1", "stream": "stdout"}) as response:
        answer = await response.json()
    assert answer["logs"] == "fake program: ready\n"
    async with http.get(url, params={"tail": "0"}) as response:
        assert (await response.json())["logs"] == ""
    # A program that never ran has logs (the Host's notes) but no container.
    created = await create_program(http, rest_host, new_user())
    async with http.get(f"{rest_host.url}/programs/{created['program_id']}/logs") as response:
        answer = await response.json()
    assert answer["container_id"] == ""
    assert "ProgramCreated: now CREATED\n" in answer["logs"]


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"format": "ndjson"}, {}),
        ({"format": "NDJSON"}, {"Accept": "application/json"}),  # the query wins
        ({}, {"Accept": "application/x-ndjson"}),
        ({}, {"Accept": "text/plain, application/x-ndjson;q=0.9"}),
    ],
)
async def test_logs_ndjson_when_asked_for(
    rest_host: RestHost, http: Session, params: dict[str, str], headers: dict[str, str]
) -> None:
    """Hershy's own clients (the dashboard, scripts) ask for NDJSON and still get it."""
    program = await ready_program(http, rest_host, new_user())
    url = f"{rest_host.url}/programs/{program['program_id']}/logs"
    async with http.get(url, params=params, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert lines
    assert all(set(line) == {"time", "stream", "run", "line"} for line in lines)


async def test_logs_follow_implies_ndjson(rest_host: RestHost, http: Session) -> None:
    program = await create_program(http, rest_host, new_user())
    url = f"{rest_host.url}/programs/{program['program_id']}/logs"
    async with http.get(url, params={"follow": "1"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        first = json.loads(await asyncio.wait_for(response.content.readline(), 5))
    assert first["line"] == "ProgramCreated: now CREATED"


@pytest.mark.parametrize(
    "query", ["format=json&follow=1", "format=xml", "format=", "format=json&format=x"]
)
async def test_logs_bad_format(rest_host: RestHost, http: Session, query: str) -> None:
    program = await create_program(http, rest_host, new_user())
    url = f"{rest_host.url}/programs/{program['program_id']}/logs?{query}"
    status, _, text = await raw(http, "GET", url)
    if query == "format=":  # empty means "not given": the default
        assert status == 200
        assert "logs" in json.loads(text)
        return
    if query == "format=json&format=x":  # the first one counts, as for every parameter
        assert status == 200
        return
    assert status == 400, text
    assert json.loads(text)["field"] == "format"


async def test_logs_json_of_someone_elses_program_is_404(
    auth_host: RestHost, http: Session
) -> None:
    """The JSON answer asks the core with the caller's token, like NDJSON: nothing leaks."""
    alice, bob = await make_user(auth_host, "alice"), await make_user(auth_host, "bob")
    body = {"user_id": alice[0], "dockerfile": DOCKERFILE}
    async with http.post(f"{auth_host.url}/programs", json=body, headers=alice[1]) as response:
        program = await response.json()
    url = f"{auth_host.url}/programs/{program['program_id']}/logs"
    for headers, expected in ((bob[1], 404), ({}, 401), (alice[1], 200)):
        status, _, text = await raw(http, "GET", url, headers=headers)
        assert status == expected, text
        if expected != 200:
            assert "ProgramCreated" not in text
            assert "container_id" not in text


# --- proxy_url and /proxy/<any path> -----------------------------------------------------


async def test_proxy_url_slash_watcher_status_reaches_the_program(
    rest_host: RestHost, http: Session
) -> None:
    """The original's clients call `${proxy_url}/watcher/status`."""
    async with program_with_watcher(http, rest_host) as (program, watcher):
        proxy_url = program["proxy_url"]
        assert proxy_url == f"{rest_host.url}/programs/{program['program_id']}/proxy"
        async with http.get(f"{proxy_url}/watcher/status") as response:
            assert response.status == 200
            assert await response.json() == {
                "state": "Running",
                "isRunning": True,
                "watcherID": "fake",
            }
        assert [seen.raw_path for seen in watcher.seen] == ["/watcher/status"]
        # Hershy's own route keeps working.
        async with http.get(
            f"{rest_host.url}/programs/{program['program_id']}/watcher/status"
        ) as r:
            assert r.status == 200
        assert [seen.raw_path for seen in watcher.seen][-1] == "/watcher/status"


@pytest.mark.parametrize(
    ("suffix", "upstream"),
    [
        ("/metrics", "/metrics"),
        ("/api/v1/orders?limit=5&x=%20y", "/api/v1/orders?limit=5&x=%20y"),
        ("/", "/"),
        ("", "/"),
        ("/watcher", "/watcher"),
        ("/a%20b/c", "/a%20b/c"),
    ],
)
async def test_proxy_forwards_any_path(
    rest_host: RestHost, http: Session, suffix: str, upstream: str
) -> None:
    async with program_with_watcher(http, rest_host) as (program, _):
        target = f"/programs/{program['program_id']}/proxy{suffix}"
        status, body = await raw_request(
            rest_host.http_address,
            f"POST {target} HTTP/1.1\r\nHost: {rest_host.http_address}\r\n"
            "Content-Length: 5\r\nConnection: close\r\n\r\nhello".encode(),
        )
        assert status == 200, body
        echoed = json.loads(body)
        assert echoed["raw_path"] == upstream
        assert echoed["method"] == "POST"
        assert echoed["body"] == "hello"
        assert echoed["headers"]["x-forwarded-prefix"] == f"/programs/{program['program_id']}/proxy"


@pytest.mark.parametrize(
    "suffix",
    [
        "/../../programs",
        "/%2e%2e/%2e%2e/healthz",
        "/a/..",
        "/a%2f..%2fb",
        "/a%5cb",
        "/a\\b",
        "/a%00b",
        "/./watcher/status",
    ],
)
async def test_proxy_any_path_is_escape_proof(
    rest_host: RestHost, http: Session, suffix: str
) -> None:
    """Dot segments, encoded slashes and NUL are refused before anything is forwarded."""
    async with program_with_watcher(http, rest_host) as (program, watcher):
        target = f"/programs/{program['program_id']}/proxy{suffix}"
        status, body = await raw_request(
            rest_host.http_address, raw_get(target, rest_host.http_address)
        )
        assert status == 400, body
        assert json.loads(body)["field"] == "path"
        assert watcher.seen == []


async def test_proxy_any_path_of_an_absolute_target_goes_to_the_program_only(
    rest_host: RestHost, http: Session
) -> None:
    async with program_with_watcher(http, rest_host) as (program, watcher):
        target = f"http://169.254.169.254/programs/{program['program_id']}/proxy/latest/meta-data"
        status, body = await raw_request(rest_host.http_address, raw_get(target, "169.254.169.254"))
        assert status == 200, body
        assert json.loads(body)["raw_path"] == "/latest/meta-data"
        assert [seen.raw_path for seen in watcher.seen] == ["/latest/meta-data"]


async def test_proxy_any_path_needs_the_owners_token(auth_host: RestHost, http: Session) -> None:
    alice, bob = await make_user(auth_host, "alice"), await make_user(auth_host, "bob")
    async with owned_program_with_watcher(http, auth_host, alice) as (program, watcher):
        url = f"{program['proxy_url']}/private/keys"
        for headers, expected in ((bob[1], 404), ({}, 401), ({"Authorization": "Bearer x"}, 401)):
            status, _, text = await raw(http, "GET", url, headers=headers)
            assert status == expected, text
        assert watcher.seen == [], "nothing reached the program without its owner's token"
        status, _, text = await raw(http, "GET", url, headers=alice[1])
        assert status == 200, text
        assert json.loads(text)["raw_path"] == "/private/keys"
        (seen,) = watcher.seen
        assert "authorization" not in seen.headers, "the Host's token never reaches the program"


async def test_proxy_any_path_of_a_stopped_program_is_503(
    rest_host: RestHost, http: Session
) -> None:
    program = await ready_program(http, rest_host, new_user())
    await post_action(http, rest_host, program["program_id"], "stop")
    await wait_state(http, rest_host, program["program_id"], "stopped")
    status, _, text = await raw(http, "GET", f"{program['proxy_url']}/anything")
    assert status == 503, text
    assert json.loads(text)["error"] == "PROGRAM_NOT_READY"


# --- lifecycle answers and stop at rest -------------------------------------------------------


async def test_lifecycle_answers_carry_program_id_state_and_message(
    rest_host: RestHost, http: Session
) -> None:
    """The original's scripts print `.message` of start, stop, restart and delete."""
    program = await create_program(http, rest_host, new_user())
    program_id = program["program_id"]
    base = f"{rest_host.url}/programs/{program_id}"
    for method, suffix, state in (
        ("POST", "/start", None),
        ("POST", "/restart", None),
        ("POST", "/stop", None),
        ("DELETE", "", "Deleted"),
    ):
        if suffix == "/stop":
            await wait_state(http, rest_host, program_id, "ready")
        status, _, text = await raw(http, method, base + suffix)
        assert status == 200, (suffix, text)
        answer = json.loads(text)
        assert answer["program_id"] == program_id
        assert isinstance(answer["message"], str), suffix
        assert answer["message"], suffix
        if state is not None:
            assert answer["state"] == state
        assert field_of("message", text) == answer["message"]
        assert answer["revision"] > 0  # Hershy's program shape, still all there
        if suffix == "/restart":
            await wait_state(http, rest_host, program_id, "ready")


async def test_stop_on_a_program_at_rest_is_a_200_no_op(rest_host: RestHost, http: Session) -> None:
    program = await create_program(http, rest_host, new_user())
    program_id = program["program_id"]
    for expected in ("Created", "Stopped"):
        if expected == "Stopped":
            await post_action(http, rest_host, program_id, "start")
            await wait_state(http, rest_host, program_id, "ready")
            await post_action(http, rest_host, program_id, "stop")
            await wait_state(http, rest_host, program_id, "stopped")
        async with http.get(f"{rest_host.url}/programs/{program_id}") as response:
            before = await response.json()
        for _ in range(2):  # and again: still nothing
            status, answer = await post_action(http, rest_host, program_id, "stop")
            assert status == 200, answer
            assert answer["state"] == expected
            assert expected in answer["message"]
            assert "nothing to stop" in answer["message"]
            assert answer["revision"] == before["revision"], "a no-op changes nothing"
    # A stop that is not at rest still means a stop.
    await post_action(http, rest_host, program_id, "start")
    await wait_state(http, rest_host, program_id, "ready")
    status, answer = await post_action(http, rest_host, program_id, "stop")
    assert status == 200
    assert answer["state"] == "Stopping"


async def test_stop_at_rest_stays_failed_precondition_over_grpc(
    rest_host: RestHost, http: Session
) -> None:
    """Only the REST shim turns it into a no-op: gRPC clients rely on FAILED_PRECONDITION."""
    program = await create_program(http, rest_host, new_user())
    async with grpc.aio.insecure_channel(rest_host.grpc_address) as channel:
        stub: pb_grpc.ProgramServiceAsyncStub = pb_grpc.ProgramServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.StopProgram(
                pb.StopProgramRequest(name=f"programs/{program['program_id']}"), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_stop_of_someone_elses_program_at_rest_is_still_404(
    auth_host: RestHost, http: Session
) -> None:
    alice, bob = await make_user(auth_host, "alice"), await make_user(auth_host, "bob")
    body = {"user_id": alice[0], "dockerfile": DOCKERFILE}
    async with http.post(f"{auth_host.url}/programs", json=body, headers=alice[1]) as response:
        program = await response.json()
    url = f"{auth_host.url}/programs/{program['program_id']}/stop"
    status, _, text = await raw(http, "POST", url, headers=bob[1])
    assert status == 404, text
    assert alice[0] not in text
    status, _, text = await raw(http, "POST", url, headers=alice[1])
    assert status == 200, text


# --- error_msg, and stop on Error (an injected build failure) -------------------------------


@contextlib.asynccontextmanager
async def in_process_host(base: Path, behaviour: FakeBehaviour) -> AsyncIterator[str]:
    """The same Host in this process, so a fault can be injected; yields its REST URL."""
    http_address = f"127.0.0.1:{free_port()}"
    config = HostConfig(
        data_dir=base,
        runtime=Runtime.FAKE,
        grpc_addr=f"127.0.0.1:{free_port()}",
        http_addr=http_address,
        no_auth=True,
        fake_behaviour=behaviour,
    )
    async with running_host(config):
        yield f"http://{http_address}"


async def test_error_msg_beside_error_then_stop_clears_it(tmp_path: Path, http: Session) -> None:
    behaviour = FakeBehaviour(failing_builds=1, failure_reason="the base image is broken")
    async with in_process_host(tmp_path / "host", behaviour) as url:
        body = {"user_id": new_user(), "dockerfile": DOCKERFILE}
        async with http.post(f"{url}/programs", json=body) as response:
            program = await response.json()
        assert program["error_msg"] == program["error"] == ""
        program_id = program["program_id"]
        async with http.post(f"{url}/programs/{program_id}/start") as response:
            assert response.status == 200
        params = {"state": "error", "timeout": "5"}
        async with http.get(f"{url}/programs/{program_id}/wait", params=params) as response:
            assert response.status in (200, 409), await response.text()
        status, _, text = await raw(http, "GET", f"{url}/programs/{program_id}")
        failed = json.loads(text)
        assert failed["state"] == "Error"
        assert "the base image is broken" in failed["error_msg"]
        assert failed["error_msg"] == failed["error"]
        assert field_of("error_msg", text) == failed["error_msg"]
        # In the list and the event stream too (the original UI read it from both).
        async with http.get(f"{url}/programs") as response:
            (listed,) = (await response.json())["programs"]
        assert listed["error_msg"] == failed["error_msg"]
        # A stop in Error is the core's own (it clears the error), with the original's shape.
        status, _, text = await raw(http, "POST", f"{url}/programs/{program_id}/stop")
        assert status == 200, text
        stopped = json.loads(text)
        assert stopped["state"] in ("Stopping", "Stopped")
        assert stopped["message"] == "program stopping"
        params = {"state": "stopped", "timeout": "5"}
        async with http.get(f"{url}/programs/{program_id}/wait", params=params) as response:
            assert (await response.json())["error_msg"] == ""


async def test_logs_json_is_bounded_in_size(
    tmp_path: Path, http: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JSON answer is built whole: past its byte limit the oldest lines go, and it says so."""
    monkeypatch.setattr(rest_app, "JSON_LOG_MAX_BYTES", 80)
    async with in_process_host(tmp_path / "host", FakeBehaviour()) as url:
        body = {"user_id": new_user(), "dockerfile": DOCKERFILE}
        async with http.post(f"{url}/programs", json=body) as response:
            program_id = (await response.json())["program_id"]
        async with http.post(f"{url}/programs/{program_id}/start") as response:
            assert response.status == 200
        async with http.get(f"{url}/programs/{program_id}/wait") as response:
            assert response.status == 200
        logs = f"{url}/programs/{program_id}/logs"
        everything = await ndjson_lines(http, logs)
        whole = "".join(entry["line"] + "\n" for entry in everything)
        assert len(whole) > 80
        async with http.get(logs, params={"tail": "100000"}) as response:
            answer = await response.json()
        assert answer["truncated"] is True
        assert 0 < len(answer["logs"]) <= 80
        assert whole.endswith(answer["logs"])
        assert answer["lines"] == len(answer["logs"].splitlines())
        async with http.get(logs, params={"tail": "1"}) as response:
            assert "truncated" not in await response.json()


# --- compact JSON, grep -o, and the original's deploy script ----------------------------------


async def test_every_json_answer_is_compact(rest_host: RestHost, http: Session) -> None:
    user = new_user()
    body = {"user_id": user, "dockerfile": DOCKERFILE, "src_files": {"run": "hi\n"}}
    status, _, created = await raw(http, "POST", f"{rest_host.url}/programs", json=body)
    assert status == 201
    program_id = json.loads(created)["program_id"]
    assert grep_o(GREP_PROGRAM_ID.pattern, created) == [f'"program_id":"{program_id}"']
    base = f"{rest_host.url}/programs/{program_id}"
    answers = [created]
    for method, url in (
        ("GET", base),
        ("GET", f"{rest_host.url}/programs?user_id={user}"),
        ("GET", f"{base}/source"),
        ("GET", f"{base}/logs"),
        ("POST", f"{base}/start"),
        ("GET", f"{base}/wait?state=ready"),
        ("GET", f"{rest_host.url}/programs/prog-000000000000"),  # an error body
        ("GET", f"{rest_host.url}/healthz"),
        ("GET", f"{rest_host.url}/openapi.json"),
    ):
        _, _, text = await raw(http, method, url)
        answers.append(text)
    _, _, ndjson = await raw(http, "GET", f"{base}/logs?format=ndjson")
    answers += ndjson.splitlines()
    async with http.get(f"{base}/events") as events:
        for _ in range(3):
            line = (await asyncio.wait_for(events.content.readline(), 5)).decode()
            if line.startswith("data: "):
                answers.append(line.removeprefix("data: ").rstrip("\n"))
    for text in answers:
        data = json.loads(text)
        assert text == json.dumps(data, separators=(",", ":")), text[:200]
    assert '"state":"Ready"' in answers[6]


async def test_the_originals_deploy_and_monitor_script(rest_host: RestHost, http: Session) -> None:
    """A shell script like the original's: curl, then `grep -o` and `cut` on the raw body."""
    user = new_user()
    process = await asyncio.create_subprocess_exec(
        "sh",
        str(ROOT / "tests" / "fixtures" / "original-deploy.sh"),
        rest_host.url,
        user,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, (out, err)
    lines = out.decode().splitlines()
    assert lines[0].startswith("created prog-"), lines
    program_id = lines[0].removeprefix("created ")
    assert lines[1] == "program starting"
    assert lines[2] == "state Ready"
    assert lines[3] == f"proxy {rest_host.url}/programs/{program_id}/proxy"
    assert lines[4] == "program stopping"
    assert lines[5].endswith("nothing to stop") or lines[5] == "program stopping", lines
    assert lines[6] == "program deleted"
    async with http.get(f"{rest_host.url}/programs/{program_id}") as response:
        assert response.status == 404, "DELETE really deletes"


# --- unknown keys in a create body ---------------------------------------------------------------


async def test_unknown_keys_are_ignored_with_a_warning(rest_host: RestHost, http: Session) -> None:
    body = {
        "user_id": new_user(),
        "dockerfile": DOCKERFILE,
        "name": "my bot",
        "description": "from the original UI",
        "env": {"A": "1"},
    }
    async with http.post(f"{rest_host.url}/programs", json=body) as response:
        assert response.status == 201, await response.text()
        assert response.headers["Warning"] == (
            '299 - "unknown keys ignored: description, env, name"'
        )
        program = await response.json()
    assert "name" not in program
    assert "env" not in program
    # Known keys only: no warning at all.
    known = {"user_id": new_user(), "dockerfile": DOCKERFILE}
    async with http.post(f"{rest_host.url}/programs", json=known) as response:
        assert response.status == 201
        assert "Warning" not in response.headers


HOSTILE_KEYS = {
    "x\r\nSet-Cookie: stolen=1": 1,
    'q"uote\\': 1,
    "k" * 10_000: 1,
    "ünï\x00code\u2028": 1,
}


@pytest.mark.parametrize(
    "keys",
    [HOSTILE_KEYS, {**HOSTILE_KEYS, **{f"key{i:05d}": i for i in range(5000)}}],
    ids=["hostile", "hostile-and-5000-more"],
)
async def test_hostile_unknown_keys_cannot_break_the_warning_header(
    rest_host: RestHost, http: Session, keys: dict[str, int]
) -> None:
    body = json.dumps({"user_id": new_user(), "dockerfile": DOCKERFILE, **keys}).encode()
    request = (
        f"POST /programs HTTP/1.1\r\nHost: {rest_host.http_address}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    host, _, port = rest_host.http_address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    assert head.startswith("HTTP/1.1 201"), head
    headers = head.split("\r\n")[1:]
    assert not any(line.lower().startswith("set-cookie") for line in headers), headers
    (warning,) = [line for line in headers if line.lower().startswith("warning:")]
    value = warning.split(":", 1)[1].strip()
    assert re.fullmatch(r'299 - "[ -!#-\[\]-~]*"', value), value
    if len(keys) > MAX_IGNORED_KEYS_NAMED:
        assert value.endswith(f' and {len(keys) - MAX_IGNORED_KEYS_NAMED} more"')
    else:
        assert "x??Set-Cookie: stolen=1" in value, value
        assert "q?uote?" in value, value
        assert "?n?" in value, value
    assert len(value) < 30 + MAX_IGNORED_KEYS_NAMED * (MAX_IGNORED_KEY_CHARS + 2) + 30
    assert "k" * (MAX_IGNORED_KEY_CHARS + 1) not in value


async def test_unknown_resource_keys_are_still_400(rest_host: RestHost, http: Session) -> None:
    """Deliberately stricter: a misspelt limit silently ignored would run without it."""
    body = {"user_id": new_user(), "dockerfile": DOCKERFILE, "resources": {"memory": 1}}
    status, _, text = await raw(http, "POST", f"{rest_host.url}/programs", json=body)
    assert status == 400
    assert json.loads(text)["field"] == "resources.memory"


async def test_a_known_key_of_the_wrong_type_is_still_400(
    rest_host: RestHost, http: Session
) -> None:
    body = {"user_id": new_user(), "dockerfile": DOCKERFILE, "src_files": ["run"], "extra": 1}
    status, headers, text = await raw(http, "POST", f"{rest_host.url}/programs", json=body)
    assert status == 400
    assert json.loads(text)["field"] == "src_files"
    assert "Warning" not in headers


# --- the deliberate differences, and the table that names them ----------------------------------


async def test_stricter_user_ids_and_tokens_differ_as_documented(
    auth_host: RestHost, http: Session
) -> None:
    body = {"user_id": "Alice Smith", "dockerfile": DOCKERFILE}
    status, _, text = await raw(
        http,
        "POST",
        f"{auth_host.url}/programs",
        json=body,
        headers={"Authorization": f"Bearer {auth_host.admin_token}"},
    )
    assert status == 400, text
    assert json.loads(text)["field"] == "user_id", text
    status, headers, _ = await raw(http, "GET", f"{auth_host.url}/programs")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="hershy"'


def test_docs_have_the_compatibility_table() -> None:
    text = (ROOT / "docs" / "rest.md").read_text()
    table = text.split("### Compatibility with the original system", 1)[1].split("\n### ", 1)[0]
    for row in (
        "`GET /programs/{id}/source`",
        "`GET /programs/{id}/logs`",
        "`proxy_url`",
        "`/programs/{id}/proxy/",
        "`message`",
        "stop",
        "`error_msg`",
        "grep -o",
        "unknown keys",
        "DELETE",
        "user ids",
        "tokens",
    ):
        assert row in table, row


# --- helpers with tokens ----------------------------------------------------------------


async def make_user(host: RestHost, prefix: str) -> tuple[str, dict[str, str]]:
    """A user id and the headers of their token (made with the admin's token over gRPC)."""
    user_id = new_user(prefix)
    async with grpc.aio.insecure_channel(host.grpc_address) as channel:
        tokens: token_pb2_grpc.TokenServiceAsyncStub = token_pb2_grpc.TokenServiceStub(channel)
        token = await tokens.CreateToken(
            token_pb2.CreateTokenRequest(user_id=user_id),
            metadata=(("authorization", f"Bearer {host.admin_token}"),),
            timeout=10,
        )
    return user_id, {"Authorization": f"Bearer {token.secret}"}


@contextlib.asynccontextmanager
async def owned_program_with_watcher(
    http: Session, host: RestHost, owner: tuple[str, dict[str, str]]
) -> AsyncIterator[tuple[dict[str, Any], FakeWatcher]]:
    """A Ready program of `owner`'s with a FakeWatcher on its port (the next if it is taken)."""
    user_id, headers = owner

    async def ready() -> dict[str, Any]:
        body = {"user_id": user_id, "dockerfile": DOCKERFILE}
        async with http.post(f"{host.url}/programs", json=body, headers=headers) as response:
            program = await response.json()
        url = f"{host.url}/programs/{program['program_id']}"
        async with http.post(f"{url}/start", headers=headers) as response:
            assert response.status == 200
        async with http.get(f"{url}/wait", headers=headers) as response:
            return dict(await response.json())

    async with program_with_watcher(http, host, ready) as found:
        yield found
