"""The build policy's refusal over REST: `400` naming the field and the line, nothing created.

The real `hershy serve` console script (fake runtime: the policy holds on every runtime).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import aiohttp
import pytest

from tests.e2e.rest_support import RestHost, running_rest_server

REFUSED = [
    ("FROM hershy/prog-0123456789ab:b-0123456789abcdef01234567\n", 1, "FROM may name only"),
    ("FROM scratch\nADD http://127.0.0.1:9000/programs /x\n", 2, "nothing remote"),
    ("FROM scratch\nCOPY --from=hershy-busybox:latest /bin /bin\n", 2, "earlier stage"),
    ("FROM scratch\nONBUILD RUN true\n", 2, "ONBUILD is not allowed"),
]


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-policy")) as host:
        yield host


@pytest.mark.parametrize(("dockerfile", "line", "reason"), REFUSED)
async def test_a_refused_dockerfile_is_400_naming_the_line(
    rest_host: RestHost, dockerfile: str, line: int, reason: str
) -> None:
    body = json.dumps({"user_id": "attacker", "dockerfile": dockerfile})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{rest_host.url}/programs", data=body) as response:
            status, answer = response.status, await response.json(content_type=None)
        assert status == 400, answer
        assert answer["error"] == "INVALID_ARGUMENT"
        assert answer["field"] == "dockerfile"
        assert f"line {line}: " in answer["message"]
        assert reason in answer["message"]
        async with http.get(f"{rest_host.url}/programs?user_id=attacker") as response:
            listed = await response.json(content_type=None)
        assert listed["count"] == 0, listed
