"""Program logs on disk, with followers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hershy.adapters.log_files import FileLogStore
from hershy.domain.model import LogLine, LogStream

BUILD, OUT, ERR = LogStream.BUILD, LogStream.STDOUT, LogStream.STDERR


def line(n: int, stream: LogStream = OUT) -> LogLine:
    return LogLine(float(n), stream, 1, f"line {n}")


def append_raw(path: Path, text: str) -> None:
    with open(path, "a") as file:
        file.write(text)


async def collect(store: FileLogStore, tail: int | None = None, *streams: LogStream) -> list[str]:
    return [entry.text async for entry in store.lines("p", tail, streams, follow=False)]


async def test_tail_and_stream_filter(tmp_path: Path) -> None:
    store = FileLogStore(tmp_path)
    for n in range(10):
        store.write("p", line(n, BUILD if n < 3 else (OUT if n % 2 else ERR)))
    assert await collect(store) == [f"line {n}" for n in range(10)]
    assert await collect(store, 2) == ["line 8", "line 9"]
    assert await collect(store, None, BUILD) == ["line 0", "line 1", "line 2"]
    assert await collect(store, 2, ERR) == ["line 6", "line 8"]


async def test_follow_gets_old_then_new_lines_without_gaps_or_repeats(tmp_path: Path) -> None:
    store = FileLogStore(tmp_path)
    for n in range(3):
        store.write("p", line(n))
    stream = store.lines("p", None, (), follow=True)
    for n in range(3, 6):  # written after following began, before the first read
        store.write("p", line(n))
    seen = [(await anext(stream)).text for _ in range(6)]
    assert seen == [f"line {n}" for n in range(6)]
    store.write("p", line(6))
    assert (await asyncio.wait_for(anext(stream), 1)).text == "line 6"
    await store.remove("p")
    assert [entry async for entry in stream] == []  # removal ends the stream
    assert not (tmp_path / "p" / "logs").exists()


async def test_rotation_keeps_the_previous_file(tmp_path: Path) -> None:
    store = FileLogStore(tmp_path, max_bytes=500)
    for n in range(30):
        store.write("p", line(n))
    texts = await collect(store)
    assert texts[-1] == "line 29"
    assert len(texts) < 30  # the oldest rotated away
    assert texts == [f"line {n}" for n in range(30 - len(texts), 30)]
    assert (tmp_path / "p" / "logs" / "program.log.1").exists()


async def test_a_torn_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = FileLogStore(tmp_path)
    store.write("p", line(1))
    store.close()
    append_raw(tmp_path / "p" / "logs" / "program.log", '{"t": 2.0, "s": "std\n')
    store.write("p", line(3))
    assert await collect(store) == ["line 1", "line 3"]
