"""Asking programs' WatcherAPIs how they are: one probe, and the Host's liveness prober.

One `LivenessProber` per runtime probes every READY program on one shared aiohttp
session, from one scheduling task, with a bounded number of probes in flight: a
program's probe is due every `interval` seconds, jittered by +-`jitter` (so programs
started together spread out instead of probing in step), sooner while its answers are
bad (so its grace is measured). Answers become `WatcherProbed` events only when they
differ from the one before, or while they are bad: the reducer records only changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from hershy.domain import events as ev
from hershy.domain.health import Answer, StartJudge, StartVerdict, classify
from hershy.domain.model import ReadinessCheck
from hershy.service.ports import Outbox

log = logging.getLogger(__name__)

#: The most of an answer read: a status answer is small; a hostile one must not be.
MAX_ANSWER_BYTES = 64 * 1024
#: The most of the program's own words (an `error` or `message` field) kept with an answer.
MAX_DETAIL_CHARS = 200
#: Fields of a Hersh-like answer that say why, beside its state.
DETAIL_FIELDS = ("error", "message", "lastError", "reason")


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    answered: bool
    state: str = ""
    detail: str = ""


#: Called with each probe's duration (seconds) and whether it was answered (metrics).
ProbeObserver = Callable[[float, bool], None]


async def probe_once(
    session: aiohttp.ClientSession, address: str, check: ReadinessCheck, limit: float
) -> ProbeAnswer:
    """GET the check's path on `address` (`HOST:PORT`) and read the check's field."""
    url = f"http://{address}{check.path}"
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=limit), allow_redirects=False
        ) as response:
            body = await response.content.read(MAX_ANSWER_BYTES)
            if not 200 <= response.status < 300:
                return ProbeAnswer(False, detail=f"it answered {response.status}")
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        return ProbeAnswer(False, detail=type(error).__name__)
    if not check.field:
        return ProbeAnswer(True)
    try:
        data = json.loads(body)
    except ValueError:
        return ProbeAnswer(False, detail="its answer is not JSON")
    value = _field(data, check.field)
    if isinstance(value, bool):
        value = str(value).lower()  # JSON's spelling, so `ready_values: ["true"]` works
    elif not isinstance(value, str | int | float):
        return ProbeAnswer(False, detail=f"its answer has no {check.field!r}")
    detail = ""
    if isinstance(data, dict):
        for name in DETAIL_FIELDS:
            said = data.get(name)
            if isinstance(said, str) and said:
                detail = said[:MAX_DETAIL_CHARS]
                break
    return ProbeAnswer(True, str(value)[:MAX_DETAIL_CHARS], detail)


class StartRefused(Exception):
    """The program reported a failed state while starting, or (Kubernetes) its Pod ended or
    cannot run; the message says which."""


async def until_ready(
    session: aiohttp.ClientSession,
    address: str,
    check: ReadinessCheck,
    run: int,
    outbox: Outbox,
    *,
    default_timeout: float,
    poll_interval: float,
    still_starting: Callable[[], None] = lambda: None,
) -> ProbeAnswer:
    """Probe until the program says it is initialised (the readiness check's judge);
    each change of its answer is reported, so its view shows while it initialises.

    `still_starting` is called before each probe and raises (`StartRefused`) when what
    runs the program is gone. Returns the last answer; raises (a failed start) on a
    failed state or the timeout (the check's own, else `default_timeout`).
    """
    timeout = check.timeout_seconds or default_timeout
    deadline = time.monotonic() + timeout
    judge = StartJudge(check)
    last = ProbeAnswer(False, detail="no answer yet")
    reported: ProbeAnswer | None = None
    # Poll fast first (most programs listen within a few hundred ms), then back off.
    interval = min(0.02, poll_interval)
    while time.monotonic() < deadline:
        still_starting()
        last = await probe_once(session, address, check, limit=2.0)
        if last != reported and (last.answered or reported is not None):
            # Changes only (and not the refusals before it first listens).
            outbox.emit(ev.WatcherProbed(outbox.now(), run, last.answered, last.state, last.detail))
            reported = last
        verdict = judge.feed(time.monotonic(), last.answered, last.state, last.detail)
        if verdict is StartVerdict.READY:
            return last
        if verdict is StartVerdict.FAILED:
            raise StartRefused(judge.reason)
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, poll_interval)
    seen = f"it last reported {last.state!r}" if last.answered else (last.detail or "no answer")
    raise TimeoutError(
        f"its WatcherAPI did not answer GET {check.path} on {address} that it is ready "
        f"within {timeout:g} s ({seen})"
    )


def _field(data: object, path: str) -> object:
    """`a.b` looks into nested objects."""
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


@dataclass(slots=True)
class _Target:
    program_id: str
    run: int
    address: str
    check: ReadinessCheck
    outbox: Outbox
    last: ProbeAnswer | None = None


@dataclass(slots=True)
class ProberSettings:
    #: Seconds between probes of one READY program (jittered).
    interval: float = 10.0
    #: Each wait is `interval` times a random factor in [1 - jitter, 1 + jitter].
    jitter: float = 0.2
    #: Probes in flight at once, Host-wide.
    concurrency: int = 32
    #: How long one probe may take.
    timeout: float = 2.0
    #: While its answers are bad, a program is probed this often (at most its grace / 4).
    bad_interval: float = 2.0


@dataclass(slots=True)
class LivenessProber:
    """Probes READY programs' WatcherAPIs; reports through each program's outbox."""

    settings: ProberSettings = field(default_factory=ProberSettings)
    observe: ProbeObserver | None = None
    random: random.Random = field(default_factory=random.Random)
    _session: aiohttp.ClientSession | None = None
    _targets: dict[str, _Target] = field(default_factory=dict)
    #: (due, sequence, key): the next probe of each target; stale entries are skipped.
    _due: list[tuple[float, int, str]] = field(default_factory=list)
    _sequence: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Probes in flight now, and the most there have been (never above `concurrency`).
    in_flight: int = 0
    peak_in_flight: int = 0

    def watch(
        self,
        key: str,
        program_id: str,
        run: int,
        address: str,
        check: ReadinessCheck,
        outbox: Outbox,
        last: ProbeAnswer | None = None,
    ) -> None:
        """Probe this container's WatcherAPI from now on (until `forget(key)`)."""
        self._targets[key] = _Target(program_id, run, address, check, outbox, last)
        # The first probe comes after a random part of the interval: no storm after a restart.
        self._schedule(key, self.settings.interval * self.random.uniform(0.1, 1.0))

    def forget(self, key: str) -> None:
        self._targets.pop(key, None)

    def forget_program(self, program_id: str) -> None:
        for key in [k for k, t in self._targets.items() if t.program_id == program_id]:
            del self._targets[key]

    @property
    def watched(self) -> int:
        return len(self._targets)

    def _schedule(self, key: str, after: float) -> None:
        self._sequence += 1
        heapq.heappush(self._due, (time.monotonic() + after, self._sequence, key))
        self._wake.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        """The one scheduling task: until cancelled."""
        self._session = session
        limit = asyncio.Semaphore(self.settings.concurrency)
        async with asyncio.TaskGroup() as probes:
            while True:
                await self._until_due()
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    _, _, key = heapq.heappop(self._due)
                    target = self._targets.get(key)
                    if target is None:
                        continue
                    await limit.acquire()  # bounded: a slow Host waits, it does not pile up
                    probes.create_task(self._probe(key, target, limit))

    async def _until_due(self) -> None:
        while True:
            self._wake.clear()
            if self._due:
                wait = self._due[0][0] - time.monotonic()
                if wait <= 0:
                    return
            else:
                wait = None
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that meets its own timeout, and this loop would then never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _probe(self, key: str, target: _Target, limit: asyncio.Semaphore) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            assert self._session is not None
            started = time.monotonic()
            answer = await probe_once(
                self._session, target.address, target.check, self.settings.timeout
            )
            if self.observe is not None:
                self.observe(time.monotonic() - started, answer.answered)
        finally:
            self.in_flight -= 1
            limit.release()
        if self._targets.get(key) is not target:
            return  # forgotten meanwhile: its container is going
        bad = classify(target.check, answer.answered, answer.state) in (Answer.NONE, Answer.FAILED)
        if bad or answer != target.last:
            target.outbox.emit(
                ev.WatcherProbed(
                    target.outbox.now(), target.run, answer.answered, answer.state, answer.detail
                )
            )
        target.last = answer
        interval = self.settings.interval * self.random.uniform(
            1 - self.settings.jitter, 1 + self.settings.jitter
        )
        if bad:
            interval = min(
                interval,
                self.settings.bad_interval,
                max(0.1, target.check.liveness_grace_seconds / 4),
            )
        self._schedule(key, interval)
