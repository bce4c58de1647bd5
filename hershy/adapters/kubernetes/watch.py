"""What the Host's Pods are doing, from one list-then-watch of the API server.

Following client-go's reflector: list the Pods this Host owns (by label), then
watch from the list's resourceVersion; a watch that ends is resumed from the
last version seen, and one the API server answers 410 Gone (that version is
compacted away) starts again with a new list, whose differences from what was
known are delivered as events (a Pod gone meanwhile as a deletion). Each change
reaches the runtime as a `PodView` (the few fields it reads), and anyone may
wait for the next change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Pod

from hershy.adapters.kubernetes.pod_spec import LABEL_PROGRAM, as_dict, kube_labels, labelled_run

log = logging.getLogger(__name__)

#: A watch request the API server ends after this long (it is resumed at once).
WATCH_SECONDS = 240
RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Terminated:
    exit_code: int
    reason: str
    message: str = ""

    @property
    def oom_killed(self) -> bool:
        return self.reason == "OOMKilled"


@dataclass(frozen=True, slots=True)
class PodView:
    uid: str
    name: str
    program_id: str
    run: int | None
    phase: str
    ip: str
    node: str
    #: The program's container's end, once it ended.
    terminated: Terminated | None
    #: Why the Pod ended without its container ending (an eviction), or cannot be scheduled.
    reason: str
    message: str
    deleting: bool
    #: The container has started (and not ended).
    running: bool
    stop_grace: str

    @property
    def ended(self) -> bool:
        return self.terminated is not None or self.phase in ("Succeeded", "Failed")


def view_of(pod: Mapping[str, Any]) -> PodView:
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    labels = metadata.get("labels") or {}
    terminated = None
    running = False
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if state.get("terminated"):
            done = state["terminated"]
            terminated = Terminated(
                int(done.get("exitCode", -1)),
                str(done.get("reason") or ""),
                str(done.get("message") or ""),
            )
        elif state.get("running"):
            running = True
    reason, message = str(status.get("reason") or ""), str(status.get("message") or "")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = reason or str(condition.get("reason") or "Unschedulable")
            message = message or str(condition.get("message") or "")
    return PodView(
        uid=str(metadata.get("uid") or ""),
        name=str(metadata.get("name") or ""),
        program_id=str(labels.get(LABEL_PROGRAM) or ""),
        run=labelled_run(labels),
        phase=str(status.get("phase") or "Pending"),
        ip=str(status.get("podIP") or ""),
        node=str(spec.get("nodeName") or ""),
        terminated=terminated,
        reason=reason,
        message=message,
        deleting=bool(metadata.get("deletionTimestamp")),
        running=running,
        stop_grace=str((metadata.get("annotations") or {}).get("dev.hershy.stop-grace") or ""),
    )


#: Called with each change: the Pod as it is now, and whether it was deleted.
OnChange = Callable[[PodView, bool], None]


class PodWatch:
    def __init__(
        self, client: AsyncClient, namespace: str, labels: Mapping[str, str], on_change: OnChange
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._labels = kube_labels(labels)
        self._on_change = on_change
        self.pods: dict[str, PodView] = {}
        self._changed = asyncio.Condition()
        self._version: str | None = None
        self.synced = asyncio.Event()
        #: Every pod IP this Host's Pods had, in this process (the proxy's allowlist).
        self.ips_seen: set[str] = set()

    def by_program(self, program_id: str) -> list[PodView]:
        return [pod for pod in self.pods.values() if pod.program_id == program_id]

    async def changed(self) -> None:
        """Return at the next change (of any Pod)."""
        async with self._changed:
            await self._changed.wait()

    async def relist(self) -> None:
        """List the Pods; tell what differs from what was known (a vanished one as deleted)."""
        listing = self._client.list(Pod, namespace=self._namespace, labels=self._labels)
        seen: dict[str, PodView] = {}
        async for pod in listing:
            view = view_of(as_dict(pod))
            seen[view.uid] = view
        self._version = listing.resourceVersion
        for uid, old in list(self.pods.items()):
            if uid not in seen:
                self._apply(old, deleted=True)
        for view in seen.values():
            if self.pods.get(view.uid) != view:
                self._apply(view, deleted=False)
        self.synced.set()
        await self._notify()

    async def run(self) -> None:
        """Follow the Pods until cancelled (a list first, if none was made)."""
        while True:
            try:
                if self._version is None:
                    await self.relist()
                watching = self._client.watch(
                    Pod,
                    namespace=self._namespace,
                    labels=self._labels,
                    resource_version=self._version,
                    server_timeout=WATCH_SECONDS,
                )
                async for kind, pod in watching:
                    raw = as_dict(pod)
                    self._version = (raw.get("metadata") or {}).get("resourceVersion")
                    if kind == "BOOKMARK":
                        continue
                    self._apply(view_of(raw), deleted=kind == "DELETED")
                    await self._notify()
            except ApiError as error:
                if error.status.code == 410:
                    log.info("Pod watch: version %s is gone; listing again", self._version)
                    self._version = None
                    continue
                log.warning("Pod watch failed (%s); resuming", error.status.message)
            except (httpx2.HTTPError, OSError) as error:
                log.warning("Pod watch lost (%s); resuming", error)
            await asyncio.sleep(RETRY_SECONDS)

    def _apply(self, view: PodView, *, deleted: bool) -> None:
        if deleted:
            self.pods.pop(view.uid, None)
        else:
            self.pods[view.uid] = view
            if view.ip:
                self.ips_seen.add(view.ip)
        try:
            self._on_change(view, deleted)
        except Exception:  # one bad callback must not end the watch of every Pod
            log.exception("handling a change of Pod %s failed", view.name)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
