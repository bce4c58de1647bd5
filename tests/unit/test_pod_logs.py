"""The Kubernetes runtime's log copy: a stream cut and begun again (or resumed after a Host
restart) doubles and loses nothing. The API server is faked (fault injection: cut streams)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import httpx2

from hershy.adapters.kubernetes.logs import PodOutput
from hershy.adapters.log_files import FileLogStore
from hershy.domain.model import LogStream

UID = "0123456789abcdef-uid"


def stamp(second: int, nanos: int = 0) -> str:
    return f"2026-12-01T10:00:{second:02d}.{nanos:09d}Z"


class CutStreams:
    """Each `log()` call answers the next script: lines, then maybe a cut."""

    def __init__(self, scripts: list[tuple[list[str], bool | str]]) -> None:
        self.scripts = scripts
        self.calls: list[int | None] = []

    def log(self, name: str, **options: Any) -> AsyncIterator[str]:
        self.calls.append(options.get("since"))
        lines, cut = self.scripts.pop(0) if self.scripts else ([], False)

        async def stream() -> AsyncIterator[str]:
            for line in lines:
                yield line
            if cut == "error answer":
                # What lightkube 1.0's async log() raises on an HTTP error answer.
                raise RuntimeError("Attempted to call a sync iterator on an async stream.")
            if cut:
                raise httpx2.ReadError("connection reset")

        return stream()


async def copied(tmp_path: Path, client: CutStreams, *, resume: bool = False) -> list[str]:
    logs = FileLogStore(tmp_path)
    tasks: list[asyncio.Task[None]] = []

    def spawn(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        tasks.append(task)
        return task

    output = PodOutput(lambda: client, "hershy", logs, spawn)  # type: ignore[arg-type,return-value]
    output.follow("p", 1, UID, "pod", lambda uid: not client.scripts, resume=resume)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    lines = [line async for line in logs.lines("p", None, frozenset(), False)]
    assert {line.stream for line in lines} <= {LogStream.STDOUT}
    texts = [line.text for line in lines]
    logs.close()
    return texts


async def test_a_cut_stream_begun_again_doubles_nothing(tmp_path: Path) -> None:
    first = [f"{stamp(1)} a", f"{stamp(2)} b", f"{stamp(2)} c"]  # two lines of one stamp
    # The second stream starts a second or more earlier: it repeats what was copied.
    second = [f"{stamp(1)} a", f"{stamp(2)} b", f"{stamp(2)} c", f"{stamp(2)} d", f"{stamp(3)} e"]
    client = CutStreams([(first, True), (second, False)])
    assert await copied(tmp_path, client) == ["a", "b", "c", "d", "e"]
    assert client.calls[0] is None
    assert client.calls[1] is not None
    assert client.calls[1] >= 1


async def test_after_a_host_restart_the_copy_goes_on_after_the_last_line(tmp_path: Path) -> None:
    before = CutStreams([([f"{stamp(1)} a", f"{stamp(2)} b"], False)])
    assert await copied(tmp_path, before) == ["a", "b"]
    after = CutStreams([([f"{stamp(1)} a", f"{stamp(2)} b", f"{stamp(4)} c"], False)])
    assert await copied(tmp_path, after, resume=True) == ["a", "b", "c"]


async def test_an_error_answer_is_asked_again_not_the_end_of_the_runtime(tmp_path: Path) -> None:
    client = CutStreams(
        [
            ([], "error answer"),
            ([f"{stamp(1)} a"], "error answer"),
            ([f"{stamp(1)} a", f"{stamp(2)} b"], False),
        ]
    )
    assert await copied(tmp_path, client) == ["a", "b"]
