"""The Host's numbers for operators, in Prometheus' text format (`GET /metrics`).

One registry per Host (not prometheus_client's global one), so that two Hosts
in one process, as in the tests, never mix their figures. Names follow
Prometheus' conventions: the `hershy_` prefix, `_total` for counters,
`_seconds` for durations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hershy.domain import events as ev
from hershy.domain.model import Health, Program, State

#: Builds take seconds to minutes; starts under gVisor take a fraction of a second to seconds.
BUILD_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
START_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
#: A WatcherAPI answers a status probe in about a millisecond on loopback; up to its timeout.
PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2)
PROXY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5)


class _LiveFigures(Collector):
    """Figures read when scraped: programs by state, Watch subscribers."""

    def __init__(
        self, programs: Callable[[], Iterable[Program]], subscribers: Callable[[], int]
    ) -> None:
        self._programs = programs
        self._subscribers = subscribers

    def collect(self) -> Iterable[Metric]:
        by_state = GaugeMetricFamily(
            "hershy_programs", "Programs by lifecycle state.", labels=["state"]
        )
        counts = dict.fromkeys((state.name.lower() for state in State), 0)
        for program in self._programs():
            counts[program.state.name.lower()] += 1
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        by_health = GaugeMetricFamily(
            "hershy_program_health",
            "Running programs (STARTING or READY) by the Host's verdict on their own "
            "WatcherAPI answers.",
            labels=["health"],
        )
        healths = dict.fromkeys((health.name.lower() for health in Health), 0)
        for program in self._programs():
            if program.state in (State.STARTING, State.READY):
                healths[program.health.name.lower()] += 1
        for health, count in healths.items():
            by_health.add_metric([health], count)
        yield by_health
        yield GaugeMetricFamily(
            "hershy_watch_subscribers", "Open Watch subscriptions.", value=self._subscribers()
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._entered: dict[str, float] = {}
        self.transitions = Counter(
            "hershy_transitions_total",
            "Lifecycle transitions, by the state left and the state entered.",
            ["from_state", "to_state"],
            registry=self.registry,
        )
        self.build_seconds = Histogram(
            "hershy_build_duration_seconds",
            "From BUILDING to the end of the build (built or reused), by outcome.",
            ["outcome"],
            buckets=BUILD_BUCKETS,
            registry=self.registry,
        )
        self.start_seconds = Histogram(
            "hershy_start_duration_seconds",
            "From STARTING to READY (or to the failed start), by outcome.",
            ["outcome"],
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self.crashes = Counter(
            "hershy_crashes_total",
            "Containers that exited on their own (OOM kills included).",
            registry=self.registry,
        )
        self.restarts = Counter(
            "hershy_restarts_total",
            "Automatic restarts after a crash (the backoff delay was over).",
            registry=self.registry,
        )
        self.rpcs = Counter(
            "hershy_grpc_requests_total",
            "gRPC calls, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.probe_seconds = Histogram(
            "hershy_probe_duration_seconds",
            "Liveness probes of READY programs' WatcherAPIs, by outcome (answered or not).",
            ["outcome"],
            buckets=PROBE_BUCKETS,
            registry=self.registry,
        )
        self.proxy_requests = Counter(
            "hershy_proxy_requests_total",
            "Requests through the WatcherAPI proxy, by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.proxy_seconds = Histogram(
            "hershy_proxy_request_duration_seconds",
            "Time to the proxied response's headers, by HTTP status.",
            ["status"],
            buckets=PROXY_BUCKETS,
            registry=self.registry,
        )

    def watch(
        self, programs: Callable[[], Iterable[Program]], subscribers: Callable[[], int]
    ) -> None:
        """Report these live figures on every scrape."""
        self.registry.register(_LiveFigures(programs, subscribers))

    def committed(self, before: Program | None, after: Program, event: ev.Event) -> None:
        """Count what a committed change means."""
        if after.state is State.DELETED:
            self._entered.pop(after.id, None)
        if before is None or before.state is after.state:
            self._entered.setdefault(after.id, after.updated_at)
            return
        self.transitions.labels(before.state.name.lower(), after.state.name.lower()).inc()
        # From when the program entered its previous state (not its last change in it).
        spent = max(0.0, after.updated_at - self._entered.get(after.id, before.updated_at))
        if after.state is not State.DELETED:
            self._entered[after.id] = after.updated_at
        if before.state is State.BUILDING and after.state is State.STARTING:
            self.build_seconds.labels("built").observe(spent)
        elif before.state is State.BUILDING and after.state is State.ERROR:
            self.build_seconds.labels("failed").observe(spent)
        elif before.state is State.STARTING and after.state is State.READY:
            self.start_seconds.labels("ready").observe(spent)
        elif before.state is State.STARTING and after.state is State.ERROR:
            self.start_seconds.labels("failed").observe(spent)
        if after.state is State.BACKOFF and isinstance(
            event, ev.ContainerExited | ev.WatcherProbed
        ):
            self.crashes.inc()
        if isinstance(event, ev.RestartTimerFired):
            self.restarts.inc()

    def observe_probe(self, seconds: float, answered: bool) -> None:
        self.probe_seconds.labels("answered" if answered else "unanswered").observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
