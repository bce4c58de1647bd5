"""Blocking work (file IO) off the event loop, on threads of its own kind.

The loop's default executor is one pool for everything: a flood of one kind
of work (say, saving a tenant's 10,000 source files) would hold every thread
while other tenants' small reads (a log tail) wait behind it. Each kind gets
a `WorkQueue` instead: its own threads and a bounded backlog, so one kind can
only ever wait for itself.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

Result = TypeVar("Result")
Params = ParamSpec("Params")


class WorkQueue:
    def __init__(self, name: str, workers: int, backlog: int) -> None:
        """At most `workers` jobs run at once and `backlog` more wait in the pool;
        callers beyond that wait (in asyncio, cancellable) for a place."""
        self.name = name
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._places = asyncio.Semaphore(workers + backlog)

    async def run(
        self, function: Callable[Params, Result], *args: Params.args, **kwargs: Params.kwargs
    ) -> Result:
        async with self._places:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool, functools.partial(function, *args, **kwargs)
            )

    def close(self) -> None:
        """No new work; what runs finishes, what waits in the pool is dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)
