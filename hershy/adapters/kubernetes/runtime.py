"""The Kubernetes runtime: each run of a program is a Pod the Host owns, under gVisor.

Behind the same port as the Docker runtime (`hershy.service.ports.ProgramRuntime`)
and held to the same contracts (`pod_spec.py`). What differs, and why:

- a Pod per run with `restartPolicy: Never`: the pure lifecycle keeps deciding
  restarts and backoff, exactly as on Docker;
- `/state` is a PersistentVolumeClaim per program (`--storage-class`, sized by
  its state quota), kept across runs and Host restarts, deleted with the program;
- secrets: a Secret per program, owned by the Host, mounted read-only at
  `/run/secrets` (the kubelet keeps Secret volumes in memory); the Pod names the
  Secret, never a value; it exists only while a run of the program does;
- the image is built on the Host (the Docker builder) and pushed to `--registry`;
  Pods name it by digest (`images.py`);
- the address is the Pod's IP and the WatcherAPI port; a NetworkPolicy per program
  admits only the Host's address to it (enforced only where the network plugin
  enforces policies);
- exits, OOM kills, evictions and removals come from one Pod watch (`watch.py`),
  output from the API server's log stream (`logs.py`);
- the ContainerCreated of a start is reported once the Pod has its IP (its address);
  a Stop before it still finds the Pod, by its labels.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import docker
import httpx2
from docker.errors import DockerException
from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig, codecs
from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod, Secret
from lightkube.resources.networking_v1 import NetworkPolicy

from hershy.adapters.docker.build import DockerBuilder
from hershy.adapters.docker.compose import WATCHER_PORT
from hershy.adapters.docker.engine import Engine
from hershy.adapters.kubernetes import pod_spec
from hershy.adapters.kubernetes.images import RegistryImages
from hershy.adapters.kubernetes.logs import PodOutput
from hershy.adapters.kubernetes.pod_spec import (
    LABEL_MANAGED,
    LABEL_PROGRAM,
    PodRequest,
    as_dict,
    claim_name,
    compose_pod,
    contract_violations,
    kube_labels,
    policy_name,
    program_labels,
    secret_name,
)
from hershy.adapters.kubernetes.settings import KubernetesSettings, RuntimeUnavailable
from hershy.adapters.kubernetes.watch import PodView, PodWatch
from hershy.adapters.watcher_probe import LivenessProber, ProbeAnswer, until_ready
from hershy.adapters.watcher_probe import StartRefused as StartRefused  # re-exported
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.model import LogLine, LogStream
from hershy.service.ports import LogStore, Outbox, ProgramFolders, WatcherEndpoint
from hershy.service.secrets import SecretValues

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a removal waits for the Pod (or claim) to be gone, beyond its grace period.
GONE_SECONDS = 60.0


class ContractBroken(Exception):
    """A Pod would break (or, as stored, breaks) a security contract; it does not run."""


class KubernetesRuntime:
    """Carries out effects on a Kubernetes cluster. An async context manager (it owns tasks)."""

    def __init__(
        self,
        settings: KubernetesSettings,
        files: ProgramFolders,
        logs: LogStore,
        *,
        secrets: SecretValues | None = None,
        prober: LivenessProber | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = f"runsc (gVisor) on Kubernetes, RuntimeClass {settings.runtime_class}"
        self.prober = prober or LivenessProber(settings.prober)
        self._files = files
        self._logs = logs
        self._secrets = secrets
        self._namespace = settings.namespace
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="k8s-docker")
        self._engine = Engine(settings.socket)
        self._docker: docker.DockerClient | None = None
        self._kube: AsyncClient | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._outboxes: dict[str, Outbox] = {}
        #: Pods the Host is removing, or whose end a start reports itself: no crash report.
        self._quiet: set[str] = set()
        #: Pods whose start reported them created (they had an address).
        self._created: set[str] = set()
        #: Pods whose end was reported (once each).
        self._reported: set[str] = set()
        #: The address the Host reaches Pods from, as the cluster sees it (the NetworkPolicy's).
        self._host_address: str | None = None
        self.labels = {LABEL_MANAGED: settings.host_id}
        self.watch: PodWatch | None = None
        self.output = PodOutput(lambda: self.kube, self._namespace, logs, self._spawn_if_open)
        builder = DockerBuilder(
            call=self._call,
            client=lambda: self.docker,
            engine=self._engine,
            files=files,
            logs=logs,
            host_id=settings.host_id,
            limits=settings.build_limits,
            timeout=settings.build_timeout,
        )
        self.images = RegistryImages(
            builder=builder,
            call=self._call,
            client=lambda: self.docker,
            logs=logs,
            registry=settings.registry,
            host_id=settings.host_id,
        )

    # --- lifetime -----------------------------------------------------------------------

    async def __aenter__(self) -> KubernetesRuntime:
        try:
            self._docker = await self._call(
                docker.DockerClient, base_url=f"unix://{self.settings.socket}", max_pool_size=16
            )
            await self._call(self.docker.ping)
        except DockerException as error:
            raise RuntimeUnavailable(
                f"cannot reach the Docker daemon that builds images at {self.settings.socket}: "
                f"{error}"
            ) from None
        try:
            config = (
                KubeConfig.from_file(self.settings.kubeconfig) if self.settings.kubeconfig else None
            )
            if config is None:
                config = KubeConfig.from_env()
            self._kube = AsyncClient(
                config.get(self.settings.context),
                namespace=self._namespace,
                field_manager="hershy",
                timeout=httpx2.Timeout(30.0),
            )
            await self.images.builder.resolve_base_images(self.settings.base_images)
            await self._call(self.images.builder.cgroups.setup)
            self.watch = PodWatch(self.kube, self._namespace, self.labels, self._on_change)
            await self.watch.relist()
        except (ApiError, ConfigError, httpx2.HTTPError, OSError) as error:
            self.docker.close()
            if self._kube is not None:
                await self._kube.close()
            raise RuntimeUnavailable(
                f"cannot use the Kubernetes API server ({self.settings.kubeconfig or 'kubeconfig'}"
                f", namespace {self._namespace}): {error}. Check `hershy doctor --runtime "
                "kubernetes`."
            ) from None
        except BaseException:
            self.docker.close()
            raise
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._spawn(self.watch.run())
        self._spawn(self.prober.run(self._http))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stops watching; Pods run on (a later Host adopts them)."""
        assert self._tasks is not None
        for task in self._background:
            task.cancel()
        await self._tasks.__aexit__(exc_type, exc, traceback)
        self._tasks = None
        await self._engine.close()
        if self._http is not None:
            await self._http.close()
        if self._kube is not None:
            await self._kube.close()
        if self._docker is not None:
            self._docker.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def kube(self) -> AsyncClient:
        assert self._kube is not None, "use the runtime as an async context manager"
        return self._kube

    @property
    def docker(self) -> docker.DockerClient:
        assert self._docker is not None, "use the runtime as an async context manager"
        return self._docker

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(function, *args, **kwargs))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tasks is not None
        task = self._tasks.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _spawn_if_open(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        if self._tasks is None:
            work.close()
            return None
        return self._spawn(work)

    async def resolve_base_images(self, names: Sequence[str]) -> dict[str, str]:
        """The base-image allowlist resolved to image ids (the `BaseImageResolver` port)."""
        builder = self.images.builder
        if tuple(names) == self.settings.base_images and builder.policy.base_images:
            return dict(builder.policy.base_images)
        return await builder.resolve_base_images(names)

    def watcher_endpoint(self, address: str) -> WatcherEndpoint | None:
        """Only `POD_IP:8080` of a Pod of this Host (seen by its watch)."""
        host, _, port = address.rpartition(":")
        if port != str(WATCHER_PORT) or self.watch is None:
            return None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if ip.is_loopback or ip.is_unspecified or host not in self.watch.ips_seen:
            return None
        return WatcherEndpoint(host, WATCHER_PORT)

    def placement(self, container_id: str) -> tuple[str, str] | None:
        """Where a Pod runs: (node, pod name), while the watch knows it."""
        if self.watch is None:
            return None
        pod = self.watch.pods.get(container_id)
        return (pod.node, pod.name) if pod is not None else None

    # --- effects ------------------------------------------------------------------------

    async def execute(self, program_id: str, effect: fx.HandledEffect, outbox: Outbox) -> None:
        self._outboxes[program_id] = outbox
        match effect:
            case fx.Build():
                await self.images.build(program_id, effect, outbox)
            case fx.StartContainer():
                await self._start(program_id, effect, outbox)
            case fx.StopContainer():
                await self._stop_pods(program_id, effect.run, effect.container_id)
                await self._delete(Secret, secret_name(self.settings.host_id, program_id))
                outbox.emit(ev.ContainerStopped(outbox.now(), effect.run))
            case fx.Teardown():
                await self._teardown(program_id)
                self._outboxes.pop(program_id, None)
                outbox.emit(ev.TornDown(outbox.now(), effect.run))
            case fx.AdoptContainer():
                await self._adopt(program_id, effect, outbox)
            case fx.PruneBuilds():
                await self.images.delete(program_id, effect.keep)
                await self._files.prune_builds(program_id, effect.keep)

    async def _start(self, program_id: str, effect: fx.StartContainer, outbox: Outbox) -> None:
        host = self.settings.host_id
        values = self._secrets.values(program_id) if self._secrets is not None else {}
        claim = claim_name(host, program_id)
        secret = secret_name(host, program_id) if values else None
        grace = effect.stop.grace_seconds or self.settings.stop_grace
        request = PodRequest(
            host_id=host,
            namespace=self._namespace,
            program_id=program_id,
            run=effect.run,
            build_id=effect.build_id,
            image=effect.image_id,
            resources=effect.resources,
            runtime_class=self.settings.runtime_class,
            claim=claim,
            env=effect.env,
            secret=secret,
            stop_grace_seconds=grace,
        )
        if effect.stop.signal not in ("SIGTERM", "TERM", "15"):
            self._note(
                program_id,
                effect.run,
                outbox,
                f"Kubernetes stops Pods with SIGTERM, not {effect.stop.signal}",
            )
        pod = compose_pod(request)
        # Refused before anything is made for it.
        self._check(pod, claim, secret, "refusing to run it")
        await self._stop_pods(program_id, effect.run, None)
        await self._ensure_claim(program_id, effect.resources.state_bytes)
        await self._put_secret(program_id, values)
        uid: str | None = None
        try:
            uid = await self._create_pod(pod)
            self._quiet.add(uid)
            view = await self._until_placed(uid, effect, outbox)
            address = f"{view.ip}:{WATCHER_PORT}"
            outbox.emit(
                ev.ContainerCreated(
                    outbox.now(), effect.run, uid, address, node=view.node, pod=view.name
                )
            )
            self._note(program_id, effect.run, outbox, f"Pod {view.name} runs on node {view.node}")
            await self._ensure_policy(program_id, view.ip)
            self.output.follow(program_id, effect.run, uid, view.name, self._over)
            last = await self._until_ready(uid, address, effect, outbox)
        except asyncio.CancelledError:
            if uid is not None:
                await asyncio.shield(self._remove_pod(uid, pod["metadata"]["name"], 0))
            raise
        except Exception as error:
            if uid is None:
                raise
            await self._remove_pod(uid, pod["metadata"]["name"], 0)
            if uid not in self._created:
                raise  # never placed: nothing was reported, the supervisor reports the failure
            outbox.emit(ev.StartFailed(outbox.now(), effect.run, str(error)))
            return
        finally:
            if uid is not None:
                self._created.discard(uid)
        self._quiet.discard(uid)  # from now on its end is a crash to report
        view_now = self.watch.pods.get(uid) if self.watch else None
        if view_now is not None and view_now.ended:  # it ended right as it became ready
            self._on_change(view_now, False)
        outbox.emit(ev.ContainerReady(outbox.now(), effect.run))
        self.prober.watch(uid, program_id, effect.run, address, effect.readiness, outbox, last)

    def _check(self, pod: Mapping[str, Any], claim: str, secret: str | None, what: str) -> None:
        problems = contract_violations(
            pod,
            runtime_class=self.settings.runtime_class,
            registry=self.settings.registry,
            maximum=self.settings.max_resources,
            claim=claim,
            secret=secret,
        )
        if problems:
            raise ContractBroken(f"{what}: " + "; ".join(problems))

    async def _create_pod(self, pod: dict[str, Any]) -> str:
        """Create the Pod, read back what the API server stored, and hold it to the contracts
        (admission may have changed it); one that fails is deleted at once."""
        name = pod["metadata"]["name"]
        creating = asyncio.ensure_future(self.kube.create(codecs.from_dict(pod)))
        try:
            created = await asyncio.shield(creating)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await creating
                await self._delete(Pod, name, grace=0)
            raise
        stored = as_dict(created)
        uid = str(stored["metadata"]["uid"])
        claim = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        secret = pod_spec_secret(pod)
        try:
            self._check(stored, claim, secret, "the API server stored a Pod that breaks a contract")
        except ContractBroken:
            self._quiet.add(uid)
            await self._delete(Pod, name, grace=0)
            raise
        return uid

    async def _until_placed(self, uid: str, effect: fx.StartContainer, outbox: Outbox) -> PodView:
        """The Pod once it has its IP; raises if it ends or cannot be placed in time."""
        assert self.watch is not None
        timeout = effect.readiness.timeout_seconds or self.settings.ready_timeout
        deadline = time.monotonic() + timeout
        while True:
            view = self.watch.pods.get(uid)
            if view is not None and view.ended:
                raise StartRefused(f"its Pod ended before it had an address ({describe_end(view)})")
            if view is not None and view.ip:
                self._created.add(uid)
                return view
            left = deadline - time.monotonic()
            if left <= 0:
                why = f"{view.reason}: {view.message}" if view and view.reason else "no address"
                raise TimeoutError(
                    f"its Pod was not placed and given an address within {timeout:g} s ({why})"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 1.0)):
                    await self.watch.changed()

    async def _until_ready(
        self, uid: str, address: str, effect: fx.StartContainer, outbox: Outbox
    ) -> ProbeAnswer:
        assert self._http is not None
        watch = self.watch
        assert watch is not None

        def still_starting() -> None:
            view = watch.pods.get(uid)
            if view is None or view.ended:
                raise StartRefused(
                    "its Pod ended while starting"
                    + (f" ({describe_end(view)})" if view is not None else " (it was removed)")
                )

        return await until_ready(
            self._http,
            address,
            effect.readiness,
            effect.run,
            outbox,
            default_timeout=self.settings.ready_timeout,
            poll_interval=self.settings.ready_poll_interval,
            still_starting=still_starting,
        )

    def _note(self, program_id: str, run: int, outbox: Outbox, text: str) -> None:
        self._logs.write(program_id, LogLine(outbox.now(), LogStream.HOST, run, text))

    # --- objects ------------------------------------------------------------------------

    async def _ensure_claim(self, program_id: str, state_bytes: int) -> str:
        name = claim_name(self.settings.host_id, program_id)
        spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": str(state_bytes)}},
        }
        if self.settings.storage_class:
            spec["storageClassName"] = self.settings.storage_class
        await self._create_if_missing(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": name,
                    "namespace": self._namespace,
                    "labels": program_labels(self.settings.host_id, program_id),
                },
                "spec": spec,
            }
        )
        return name

    async def _put_secret(self, program_id: str, values: Mapping[str, bytes]) -> None:
        """The program's Secret with its values now; none when it has none."""
        name = secret_name(self.settings.host_id, program_id)
        if not values:
            await self._delete(Secret, name)
            return
        secret = codecs.from_dict(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": name,
                    "namespace": self._namespace,
                    "labels": program_labels(self.settings.host_id, program_id),
                },
                "type": "Opaque",
                "immutable": False,
                "data": {key: base64.b64encode(value).decode() for key, value in values.items()},
            }
        )
        try:
            await self.kube.create(secret)
        except ApiError as error:
            if error.status.code != 409:
                raise
            await self.kube.replace(secret)

    async def _ensure_policy(self, program_id: str, pod_ip: str) -> None:
        """Only the Host may open connections to the program's WatcherAPI."""
        if self._host_address is None:
            self._host_address = await asyncio.to_thread(source_address, pod_ip)
        await self._create_if_missing(
            network_policy(
                policy_name(self.settings.host_id, program_id),
                self._namespace,
                program_labels(self.settings.host_id, program_id),
                self._host_address,
            )
        )

    async def _create_if_missing(self, manifest: dict[str, Any]) -> None:
        try:
            await self.kube.create(codecs.from_dict(manifest))
        except ApiError as error:
            if error.status.code != 409:
                raise

    async def _delete(self, kind: Any, name: str, grace: int | None = None) -> None:
        with contextlib.suppress(ApiError):
            try:
                await self.kube.delete(kind, name, namespace=self._namespace, grace_period=grace)
            except ApiError as error:
                if error.status.code != 404:
                    raise

    async def _gone(self, kind: Any, name: str, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                await self.kube.get(kind, name, namespace=self._namespace)
            except ApiError as error:
                if error.status.code == 404:
                    return
                raise
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{kind.__name__} {name} was not gone within {within:g} s")

    # --- stopping -----------------------------------------------------------------------

    async def _pods_of(self, program_id: str) -> list[dict[str, Any]]:
        labels = kube_labels(program_labels(self.settings.host_id, program_id))
        return [
            pod.to_dict()
            async for pod in self.kube.list(Pod, namespace=self._namespace, labels=labels)
        ]

    async def _stop_pods(self, program_id: str, run: int, container_id: str | None) -> None:
        """Delete (with their grace) the program's Pods of runs up to `run` and `container_id`."""
        targets = []
        for pod in await self._pods_of(program_id):
            metadata = pod["metadata"]
            uid = str(metadata["uid"])
            if uid == container_id or (pod_spec.labelled_run(metadata.get("labels")) or 0) <= run:
                grace = _int(metadata.get("annotations", {}).get(pod_spec.LABEL_STOP_GRACE))
                targets.append(self._remove_pod(uid, metadata["name"], grace))
        await asyncio.gather(*targets)

    async def _remove_pod(self, uid: str, name: str, grace: int | None) -> None:
        """Delete a Pod (SIGTERM, its grace, SIGKILL) and wait until it is gone; its last
        lines are copied first. Gone already is fine."""
        self._quiet.add(uid)
        self.prober.forget(uid)
        try:
            await self._delete(
                Pod, name, grace=grace if grace is not None else round(self.settings.stop_grace)
            )
            await self._gone(Pod, name, (grace or self.settings.stop_grace) + GONE_SECONDS)
            await self.output.drained(uid)
        finally:
            self.output.cancel(uid)

    async def _teardown(self, program_id: str) -> None:
        host = self.settings.host_id
        await self._stop_pods(program_id, run=2**62, container_id=None)
        await self._delete(Secret, secret_name(host, program_id))
        await self._delete(NetworkPolicy, policy_name(host, program_id))
        await self._delete(PersistentVolumeClaim, claim_name(host, program_id))
        await self._gone(PersistentVolumeClaim, claim_name(host, program_id), GONE_SECONDS)
        await self.images.delete(program_id)
        await self._files.remove(program_id)

    # --- crashes ------------------------------------------------------------------------

    def _over(self, uid: str) -> bool:
        view = self.watch.pods.get(uid) if self.watch is not None else None
        return view is None or view.ended

    def _on_change(self, view: PodView, deleted: bool) -> None:
        """A Pod changed: report its end (once) to its program's latest outbox."""
        if deleted and view.uid in self._quiet:
            self._quiet.discard(view.uid)  # removed by the Host, as it meant to
            return
        if not (deleted or view.ended) or view.uid in self._quiet or view.uid in self._reported:
            return
        outbox = self._outboxes.get(view.program_id)
        if outbox is None or view.run is None:
            return  # not this Host's to report yet (an adoption reports it)
        self._reported.add(view.uid)
        self.prober.forget(view.uid)
        if self._tasks is not None:
            self._spawn(self._report_end(view, deleted, outbox))

    async def _report_end(self, view: PodView, deleted: bool, outbox: Outbox) -> None:
        await self.output.drained(view.uid)
        assert view.run is not None
        if view.terminated is None:
            what = "removed" if deleted else describe_end(view)
            self._note(view.program_id, view.run, outbox, f"Pod {view.name} ended: {what}")
        code = view.terminated.exit_code if view.terminated is not None else -1
        oom = view.terminated.oom_killed if view.terminated is not None else False
        outbox.emit(ev.ContainerExited(outbox.now(), view.run, code, oom, view.uid))

    # --- a Host restart -----------------------------------------------------------------

    async def _adopt(self, program_id: str, effect: fx.AdoptContainer, outbox: Outbox) -> None:
        assert self.watch is not None
        view = self.watch.pods.get(effect.container_id or "")
        if view is None:
            outbox.emit(ev.ContainerExited(outbox.now(), effect.run, -1))
            return
        self.output.follow(program_id, effect.run, view.uid, view.name, self._over, resume=True)
        if not view.ended:
            log.info("program %s: adopted its running Pod %s", program_id, view.name)
            if view.ip:
                address = f"{view.ip}:{WATCHER_PORT}"
                self.prober.watch(
                    view.uid, program_id, effect.run, address, effect.readiness, outbox
                )
            return
        self._reported.add(view.uid)
        await self._report_end(view, False, outbox)

    async def reap(self, owned: Mapping[str, int]) -> None:
        """After a Host restart: Pods of current runs are kept (their output copied on);
        every other Pod of this Host, and claims, Secrets, policies and images that no
        program owns, are removed."""
        assert self.watch is not None
        await self.watch.relist()
        removals = []
        for view in list(self.watch.pods.values()):
            if view.run is not None and owned.get(view.program_id) == view.run:
                self.output.follow(
                    view.program_id, view.run, view.uid, view.name, self._over, resume=True
                )
            else:
                removals.append(self._remove_pod(view.uid, view.name, _int(view.stop_grace)))
        await asyncio.gather(*removals)
        kinds: tuple[Any, ...] = (PersistentVolumeClaim, Secret, NetworkPolicy)
        for kind in kinds:
            selected = kube_labels(self.labels)
            async for item in self.kube.list(kind, namespace=self._namespace, labels=selected):
                metadata = as_dict(item).get("metadata") or {}
                if (metadata.get("labels") or {}).get(LABEL_PROGRAM, "") not in owned:
                    name = str(metadata.get("name"))
                    log.info("removing %s %s: no program owns it", kind.__name__, name)
                    await self._delete(kind, name)
                    if kind is PersistentVolumeClaim:  # its volume goes with it
                        await self._gone(kind, name, GONE_SECONDS)
        for program_id in await self.images.programs_with_images() - set(owned):
            await self.images.delete(program_id)


def pod_spec_secret(pod: Mapping[str, Any]) -> str | None:
    for volume in pod["spec"]["volumes"]:
        if "secret" in volume:
            return str(volume["secret"]["secretName"])
    return None


def describe_end(view: PodView) -> str:
    if view.terminated is not None:
        done = view.terminated
        return f"exit code {done.exit_code}" + (f", {done.reason}" if done.reason else "")
    if view.reason:
        return f"{view.reason}: {view.message}" if view.message else view.reason
    return f"phase {view.phase}"


def source_address(pod_ip: str) -> str:
    """The Host's address as a Pod at `pod_ip` sees it (the kernel's route's source)."""
    with socket.socket(
        socket.AF_INET6 if ":" in pod_ip else socket.AF_INET, socket.SOCK_DGRAM
    ) as probe:
        probe.connect((pod_ip, WATCHER_PORT))
        return str(probe.getsockname()[0])


def network_policy(
    name: str, namespace: str, labels: Mapping[str, str], host_address: str
) -> dict[str, Any]:
    """Ingress to the program's Pods only from the Host, only to the WatcherAPI port."""
    prefix = 128 if ":" in host_address else 32
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "podSelector": {"matchLabels": dict(labels)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": f"{host_address}/{prefix}"}}],
                    "ports": [{"protocol": "TCP", "port": WATCHER_PORT}],
                }
            ],
        },
    }


def _int(text: object) -> int | None:
    try:
        return int(str(text))
    except ValueError:
        return None
