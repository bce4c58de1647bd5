"""`--runtime kubernetes` on the real cluster: contracts read back and seen from inside the Pod,
`/state` across runs, crash backoff, stop and delete, a Host killed with SIGKILL, hostile specs,
two nodes and a drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import docker
import pytest
from lightkube.resources.core_v1 import PersistentVolume, PersistentVolumeClaim, Pod

from hershy.adapters.kubernetes.pod_spec import (
    as_dict,
    claim_name,
    contract_violations,
    repository,
)
from hershy.adapters.kubernetes.runtime import KubernetesRuntime
from hershy.adapters.kubernetes.settings import KubernetesSettings
from hershy.adapters.log_files import FileLogStore
from hershy.adapters.source_files import FileSourceStore
from hershy.domain import effects as fx
from hershy.domain.model import Program, Resources, State
from hershy.v1 import program_pb2 as pb
from tests.conformance.conftest import RecordingOutbox
from tests.integration.conftest import Host, eventually, stub_dockerfile
from tests.integration.test_faults import create, host_process, start_until_ready, state_of
from tests.kubernetes.cluster import Cluster, admin_client, cluster_leftovers, pods_of, wait_for
from tests.kubernetes.conftest import kubernetes_host_id

pytestmark = [pytest.mark.docker, pytest.mark.kubernetes]


async def pod_of(cluster: Cluster, uid: str, host_id: str, program_id: str) -> dict[str, Any]:
    (pod,) = [p for p in await pods_of(cluster, host_id, program_id) if p["metadata"]["uid"] == uid]
    return pod


async def test_every_contract_is_read_back_from_the_api_server_and_holds_inside_the_pod(
    k8s_host: Host, kubernetes_cluster: Cluster
) -> None:
    program = await k8s_host.ready()
    host_id = kubernetes_host_id(k8s_host.registry)
    assert program.container_id is not None
    pod = await pod_of(kubernetes_cluster, program.container_id, host_id, program.id)
    # What the API server stored keeps every contract.
    problems = contract_violations(
        pod,
        runtime_class=kubernetes_cluster.runtime_class,
        registry=kubernetes_cluster.registry,
        maximum=Resources(memory_bytes=2**40, milli_cpus=10**6, pids=10**6),
        claim=claim_name(host_id, program.id),
    )
    assert problems == []
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["runtimeClassName"] == kubernetes_cluster.runtime_class
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork")
    assert not spec.get("hostPID")
    assert not spec.get("hostIPC")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["image"].startswith(f"{kubernetes_cluster.registry}/")
    assert "@sha256:" in container["image"]
    assert not any(
        "serviceaccount" in m.get("mountPath", "") for m in container.get("volumeMounts", [])
    )
    limits = container["resources"]["limits"]
    assert limits == container["resources"]["requests"]
    # From inside: gVisor's kernel, a read-only root, /state writable, no capabilities.
    uname = await k8s_host.probe(program, "/probe/uname")
    assert uname["release"] != os.uname().release, uname
    assert "gvisor" in uname["release"] or uname["release"].startswith("4.4.0"), uname
    root = await k8s_host.probe(program, "/probe/write", path="/outside")
    assert root["ok"] is False, root
    assert "read-only" in root["error"], root
    state = await k8s_host.probe(program, "/probe/write", path="/state/inside")
    assert state["ok"] is True, state
    caps = await k8s_host.probe(program, "/probe/caps")
    assert caps["capEff"] == "0000000000000000", caps


async def test_state_is_kept_across_runs_on_the_same_claim(
    k8s_host: Host, kubernetes_cluster: Cluster
) -> None:
    program = await k8s_host.ready()
    host_id = kubernetes_host_id(k8s_host.registry)
    name = f"marker-{secrets.token_hex(4)}"
    assert (await k8s_host.probe(program, "/probe/write", path=f"/state/{name}"))["ok"]
    async with admin_client(kubernetes_cluster) as admin:
        claim = as_dict(await admin.get(PersistentVolumeClaim, claim_name(host_id, program.id)))
        volume = claim["spec"]["volumeName"]
        await k8s_host.registry.stop(program.id)
        await k8s_host.registry.wait(program.id, State.STOPPED, 60)
        assert await pods_of(kubernetes_cluster, host_id, program.id) == []
        await k8s_host.registry.start(program.id)
        again = await k8s_host.registry.wait(program.id, State.READY, 90)
        assert again.container_id != program.container_id
        kept = as_dict(await admin.get(PersistentVolumeClaim, claim_name(host_id, program.id)))
        assert kept["spec"]["volumeName"] == volume, "a new volume: /state was not kept"
        pv = as_dict(await admin.get(PersistentVolume, volume))
    # The first run's file is still in the volume the second run mounts.
    source = (pv["spec"].get("hostPath") or pv["spec"].get("local") or {}).get("path")
    assert source, f"the volume's kind is unknown to this test: {pv['spec']}"
    assert (Path(source) / name).exists()
    assert (await k8s_host.probe(again, "/probe/write", path=f"/state/{name}-2"))["ok"]


async def test_a_crashing_program_restarts_with_backoff_each_run_a_new_pod(
    k8s_host: Host,
) -> None:
    program = await k8s_host.create({"STUB_EXIT_AFTER": "3s"})
    await k8s_host.registry.start(program.id)
    seen: list[Program] = []

    async def crashed() -> Program | None:
        now = k8s_host.registry.get(program.id)
        if now.state is State.BACKOFF and (not seen or now.restart_count != seen[-1].restart_count):
            seen.append(now)
        return now if len(seen) >= 2 else None

    await wait_for(crashed, 180, "two crashes", interval=0.05)
    assert [p.last_exit_code for p in seen[:2]] == [3, 3]
    assert [p.restart_count for p in seen[:2]] == [1, 2]
    assert seen[0].container_id != seen[1].container_id
    gaps = [p.next_restart_at - p.updated_at for p in seen[:2] if p.next_restart_at is not None]
    assert gaps == pytest.approx([0.5, 1.0])


async def test_stop_removes_the_pod_and_delete_leaves_nothing(
    k8s_host: Host, kubernetes_cluster: Cluster
) -> None:
    program = await k8s_host.ready()
    host_id = kubernetes_host_id(k8s_host.registry)
    await k8s_host.registry.stop(program.id)
    await k8s_host.registry.wait(program.id, State.STOPPED, 60)
    assert await pods_of(kubernetes_cluster, host_id, program.id) == []
    # The claim stays (the program's /state), and the image in the registry.
    left = await cluster_leftovers(kubernetes_cluster, host_id, program.id)
    assert any(item.startswith("PersistentVolumeClaim") for item in left), left
    assert any(item.startswith("registry tag") for item in left), left
    await k8s_host.delete(program.id, within=120)
    assert await cluster_leftovers(kubernetes_cluster, host_id, program.id) == []


async def test_a_pod_spec_that_breaks_a_contract_is_refused_and_nothing_is_created(
    tmp_path: Path, kubernetes_cluster: Cluster, docker_client: docker.DockerClient
) -> None:
    sources = FileSourceStore(tmp_path / "data")
    logs = FileLogStore(sources.root)
    host_id = f"hostile-{secrets.token_hex(3)}"
    settings = KubernetesSettings(
        kubeconfig=kubernetes_cluster.host_kubeconfig,
        namespace=kubernetes_cluster.namespace,
        runtime_class=kubernetes_cluster.runtime_class,
        registry=kubernetes_cluster.registry,
        storage_class=kubernetes_cluster.storage_class,
        host_id=host_id,
    )
    program_id = "prog-hostile"
    outbox = RecordingOutbox()
    attacks = [
        # An image from anywhere but the Host's registry, by tag.
        "docker.io/library/busybox:latest",
        # The Host's registry, but another Host's repository would still be by digest: refused
        # only when it is not the registry's; a tag is refused.
        f"{kubernetes_cluster.registry}/{repository(host_id, program_id)}:latest",
    ]
    try:
        async with KubernetesRuntime(settings, sources, logs) as runtime:
            for image in attacks:
                start = fx.StartContainer(1, image, "b1", Resources())
                with pytest.raises(Exception, match="image must be the Host registry's"):
                    await runtime.execute(program_id, start, outbox)
            # Over the Host's maximum: the spec is refused before anything is made.
            huge = Resources(memory_bytes=2**45)
            image = f"{kubernetes_cluster.registry}/x@sha256:{'0' * 64}"
            with pytest.raises(Exception, match="memory limit"):
                await runtime.execute(program_id, fx.StartContainer(1, image, "b1", huge), outbox)
        # Nothing was made for it: no Pod, no claim, no Secret, no policy.
        assert await cluster_leftovers(kubernetes_cluster, host_id, program_id) == []
    finally:
        logs.close()


async def test_a_host_killed_with_sigkill_adopts_the_same_pod(
    tmp_path: Path, kubernetes_cluster: Cluster, stub_binary: bytes
) -> None:
    cluster = kubernetes_cluster
    extra = (*cluster.serve_args(), "--stop-grace", "2")
    made: list[str] = []
    with host_process(tmp_path, *extra) as host:
        program, _ = await create(host.address, stub_binary, stub_dockerfile(), made)
        try:
            ready = await _ready(host.address, program.name)
            pods_before = await _pods_by_uid(cluster, ready.container_id)
            host.kill9()
            host.start()
            await asyncio.sleep(2)  # the Host looks at the Pod
            after = await state_of(host.address, program.name)
            assert after.state == pb.STATE_READY
            assert after.container_id == ready.container_id, "not the same Pod"
            assert (after.run, after.restart_count) == (ready.run, 0)
            pods_after = await _pods_by_uid(cluster, ready.container_id)
            assert pods_after == pods_before, "the Pod was replaced or restarted"
        finally:
            from tests.integration.test_faults import programs

            async with programs(host.address) as stub:
                await stub.DeleteProgram(pb.DeleteProgramRequest(name=program.name))
            await eventually(
                lambda: _gone(host.address, program.name),
                bool,
                within=120,
                what="the program deleted",
            )


async def _ready(address: str, name: str) -> pb.Program:
    with contextlib.suppress(AssertionError):
        return await start_until_ready(address, name)
    # A Pod start on a loaded machine can take longer than the Docker helper waits.
    return await eventually(
        lambda: state_of(address, name),
        lambda p: p.state == pb.STATE_READY,
        within=90,
        what=f"{name} READY",
    )


async def _gone(address: str, name: str) -> bool:
    try:
        await state_of(address, name)
    except Exception:
        return True
    return False


async def _pods_by_uid(cluster: Cluster, uid: str) -> tuple[str, str, int]:
    """The Pod's (uid, start time, restart count)."""
    async with admin_client(cluster) as admin:
        async for pod in admin.list(Pod, namespace=cluster.namespace):
            raw = as_dict(pod)
            if raw["metadata"]["uid"] == uid:
                statuses = raw["status"].get("containerStatuses") or [{}]
                return (
                    uid,
                    str(raw["status"].get("startTime")),
                    int(statuses[0].get("restartCount", 0)),
                )
    raise AssertionError(f"no Pod {uid}")


async def test_programs_spread_over_two_nodes_and_a_drained_node_moves_or_says_why(
    k8s_host: Host, kubernetes_cluster: Cluster
) -> None:
    cluster = kubernetes_cluster
    assert len(cluster.nodes) >= 2, f"the cluster has nodes {cluster.nodes}: two are needed"
    host_id = kubernetes_host_id(k8s_host.registry)
    programs = await asyncio.gather(*(k8s_host.ready() for _ in range(3)))
    placed: dict[str, str] = {}
    for program in programs:
        assert program.container_id is not None
        pod = await pod_of(cluster, program.container_id, host_id, program.id)
        placed[program.id] = pod["spec"]["nodeName"]
    if len(set(placed.values())) < 2:
        pytest.fail(f"every program was placed on one node: {placed}")
    victim_id, node = next(iter(placed.items()))
    try:
        await asyncio.to_thread(
            cluster.kubectl,
            "drain",
            node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--force",
            "--grace-period=2",
            "--timeout=90s",
            timeout=150,
        )

        async def moved_or_says_why() -> Program | None:
            now = k8s_host.registry.get(victim_id)
            if now.state is State.READY and now.container_id != programs[0].container_id:
                return now
            if now.error and ("node" in now.error.lower() or "volume" in now.error.lower()):
                return now
            return None

        after: Program = await wait_for(moved_or_says_why, 180, "moved, or why it cannot")
        if after.state is State.READY:
            assert after.container_id is not None
            pod = await pod_of(cluster, after.container_id, host_id, victim_id)
            assert pod["spec"]["nodeName"] != node
    finally:
        await asyncio.to_thread(cluster.kubectl, "uncordon", node)
