"""How a program's own WatcherAPI answers are read: readiness at start, liveness after.

Pure: no IO, no clock. The runtime probes and feeds the answers (with their times)
to `StartJudge` while a program starts, and reports them as `WatcherProbed` events;
the reducer reads them after READY with `verdict_of`.

Facts about Hersh v0.2.0 this follows (its source, and its programs run on Hershy):
`Watcher.Start()` serves the WatcherAPI before it sends InitRun, and its state's zero
value reads `Ready`; so a Hersh program answers `Ready` for a moment, then `InitRun`
during its first run, then `Ready` once initialised. A failing first run shows
`WaitRecover` (Hersh retries after a pause), and `Crashed` or `Killed` when it gave up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hershy.domain.model import Health, ReadinessCheck


class Answer(enum.Enum):
    """What one answer means under a program's readiness check."""

    READY = 1
    #: Answering, neither ready nor failed (Hersh: `InitRun`, `WaitRecover`, `Stopped`).
    SETTLING = 2
    #: A failed state (Hersh: `Crashed`, `Killed`).
    FAILED = 3
    #: No answer, a non-2xx one, or one without the check's field.
    NONE = 4


def classify(check: ReadinessCheck, answered: bool, state: str) -> Answer:
    if not answered:
        return Answer.NONE
    if not check.field:
        return Answer.READY
    if state in check.failed_values:
        return Answer.FAILED
    if state in check.ready_values:
        return Answer.READY
    return Answer.SETTLING


#: The health an answer gives a READY program (a bad answer: UNHEALTHY until its grace ends).
LIVE_HEALTH = {
    Answer.READY: Health.HEALTHY,
    Answer.SETTLING: Health.DEGRADED,
    Answer.FAILED: Health.UNHEALTHY,
    Answer.NONE: Health.UNHEALTHY,
}


def describe(answered: bool, state: str, detail: str) -> str:
    """One answer for people: `reported "Crashed" (nil message)`, `no answer (timeout)`."""
    if not answered:
        return f"no answer ({detail})" if detail else "no answer"
    said = f'reported "{state}"' if state else "answered"
    return f"{said} ({detail})" if detail else said


class StartVerdict(enum.Enum):
    PENDING = 1
    READY = 2
    FAILED = 3


@dataclass(slots=True)
class StartJudge:
    """Decides, answer by answer, when a starting program is initialised.

    READY once a ready answer follows a settling one (it was seen initialising), or the
    same ready answer held for `settle_seconds` (a start too quick to be seen); FAILED
    on a failed state, with the program's own words; PENDING otherwise (InitRun and
    WaitRecover keep it starting, as does no answer: the start's timeout ends that).
    """

    check: ReadinessCheck
    _ready_since: float | None = None
    _ready_state: str = ""
    _settled: bool = False
    reason: str = ""

    def feed(self, at: float, answered: bool, state: str, detail: str = "") -> StartVerdict:
        answer = classify(self.check, answered, state)
        if answer is Answer.FAILED:
            self.reason = f"the program {describe(answered, state, detail)} while starting"
            return StartVerdict.FAILED
        if answer is Answer.SETTLING:
            self._settled = True
            self._ready_since = None
            return StartVerdict.PENDING
        if answer is Answer.NONE:
            self._ready_since = None
            return StartVerdict.PENDING
        if self._settled or not self.check.field or self.check.settle_seconds <= 0:
            return StartVerdict.READY
        if self._ready_since is None or state != self._ready_state:
            self._ready_since, self._ready_state = at, state
        if at - self._ready_since >= self.check.settle_seconds:
            return StartVerdict.READY
        return StartVerdict.PENDING
