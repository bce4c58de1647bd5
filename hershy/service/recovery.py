"""Recovery after a Host restart: the runtime reconciled first, as one ordered step.

The registry hands recovered programs' supervisors to a `Recovery`, which holds
them back (`gate`) until the runtime was reconciled (`EffectHandler.reap`: it
looks at what runs, copies the output written meanwhile, removes what no
program owns), retried with backoff on the handed-in timers for as long as it
fails; `not_ready_reason` says why the Host is not ready meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping

from hershy.domain.model import Program
from hershy.service.ports import EffectHandler, Timers
from hershy.service.supervisor import Supervisor

log = logging.getLogger(__name__)

#: Recovery's retries when the runtime fails: the first delay, doubling up to the last.
RECOVERY_RETRY_FIRST = 0.5
RECOVERY_RETRY_MAX = 15.0


class Recovery:
    def __init__(self, handler: EffectHandler, timers: Timers, runs: Mapping[str, int]) -> None:
        self._handler = handler
        self._timers = timers
        self._runs = runs
        #: Set once the runtime was reconciled (at once when nothing is recovered).
        self.gate = asyncio.Event()
        self.gate.set()
        self._problem: str | None = None
        self._recovered: list[Supervisor] = []
        self._task: asyncio.Task[None] | None = None

    def close_gate(self) -> asyncio.Event:
        """Recovery begins: the gate the recovered supervisors wait for, closed until `begin`
        has reconciled the runtime."""
        self.gate.clear()
        return self.gate

    def hold(self, supervisor: Supervisor) -> None:
        """A recovered program's supervisor (spawned to wait for `gate`)."""
        self._recovered.append(supervisor)

    def begin(self, tasks: asyncio.TaskGroup) -> None:
        """Reconcile the runtime in a task of `tasks`, then open the gate."""
        self._task = tasks.create_task(self._reconcile_runtime(), name="recovery")

    def cancel(self) -> None:
        """The Host exits: stop retrying a runtime that fails."""
        if self._task is not None:
            self._task.cancel()

    async def _reconcile_runtime(self) -> None:
        """Reconcile the runtime until it works, then let the supervisors go."""
        delay = RECOVERY_RETRY_FIRST
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._handler.reap(self._runs)
                break
            except Exception as error:  # a Docker daemon down or erring: retried, never fatal
                problem = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                self._problem = (
                    f"reconciling with the runtime failed (attempt {attempt}, "
                    f"retrying in {delay:g} s): {problem}"
                )
                log.warning("recovery: %s", self._problem)
                await self._timers.sleep(delay)
                delay = min(delay * 2, RECOVERY_RETRY_MAX)
        self._problem = None
        self.gate.set()

    def not_ready_reason(self) -> str | None:
        """Why the Host is not ready yet (recovery still under way), or None once it is."""
        if not self.gate.is_set():
            return self._problem or "reconciling the recovered programs with the runtime"
        # Those reconciled are dropped as they are seen: /readyz, polled while 10,000
        # programs recover, walked them all on every call.
        self._recovered = [s for s in self._recovered if not s.reconciled.is_set()]
        if self._recovered:
            return (
                f"{len(self._recovered)} recovered programs are not reconciled yet "
                f"(e.g. {self._recovered[0].program.id})"
            )
        return None

    async def reconciled(self) -> None:
        """Returns once the runtime was reconciled and every recovered program compared with it."""
        await self.gate.wait()
        await asyncio.gather(*(s.reconciled.wait() for s in self._recovered))


class LiveRuns(Mapping[str, int]):
    """Each live program's current run, read at the moment it is asked (not a copy).

    Reaping decides per container with it, so a program created while the
    runtime is being reconciled is never taken for an orphan.
    """

    def __init__(self, programs: Mapping[str, Program]) -> None:
        self._programs = programs

    def __getitem__(self, program_id: str) -> int:
        return self._programs[program_id].run

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._programs))

    def __len__(self) -> int:
        return len(self._programs)
