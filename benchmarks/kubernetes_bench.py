"""Start-to-Ready on Kubernetes through Hershy, next to `kubectl apply` of the same Pod.

    python benchmarks/kubernetes_bench.py            # median of 5 each, interleaved; 20 at once
    python benchmarks/kubernetes_bench.py --smoke    # 2 each, 4 at once (CI)

Needs the cluster of scripts/setup-kubernetes.sh up (its env file,
/run/hershy-kubernetes/env), Docker with runsc (builds) and Go (the WatcherAPI
stub of tests/fixtures/watcher-stub is built here; nothing is pulled).

- hershy: an in-process Host on `--runtime kubernetes` (as the Role's user), one
  program of the stub, built once; from just before `registry.start` until
  `registry.wait(READY)` (the Pod created, read back and checked, scheduled, its
  IP known, its WatcherAPI answering), then stopped (not timed).
- kubectl: the very Pod the Host created (read back from the API server; only the
  name and the run label differ), `kubectl apply -f -` as the admin, until
  GET http://POD_IP:8080/watcher/status answers 200 (polled like the Host does),
  then deleted (not timed).
Runs alternate which side goes first. Then N programs (20) are created and
started at once: the time until every one is READY, and each one's own.
The machine's load (uptime) is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "clients" / "python")]

from hershy.adapters.docker.runtime import DockerSettings  # noqa: E402
from hershy.adapters.kubernetes.settings import KubernetesSettings  # noqa: E402
from hershy.bootstrap import HostConfig, Runtime, running_host  # noqa: E402
from hershy.domain.model import Resources, State  # noqa: E402
from hershy.service.registry import Registry  # noqa: E402
from tests.kubernetes.cluster import ENV_FILE, Cluster, cluster_from_env, read_env  # noqa: E402

STUB_DIR = REPO / "tests" / "fixtures" / "watcher-stub"
DOCKERFILE = 'FROM scratch\nCOPY watcher-stub /watcher-stub\nENTRYPOINT ["/watcher-stub"]\n'
SMALL = Resources(memory_bytes=64 * 1024 * 1024, milli_cpus=100, state_bytes=16 * 1024 * 1024)


def build_stub() -> bytes:
    out = Path(tempfile.mkdtemp()) / "watcher-stub"
    go = "/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else "go"
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    subprocess.run(
        [go, "build", "-ldflags=-s -w", "-o", str(out), "."],
        cwd=STUB_DIR,
        env=env,
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


async def answers(http: aiohttp.ClientSession, address: str) -> bool:
    try:
        async with http.get(f"http://{address}/watcher/status") as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def hershy_start(registry: Registry, program_id: str) -> float:
    started = time.monotonic()
    await registry.start(program_id)
    await registry.wait(program_id, State.READY, 180)
    took = time.monotonic() - started
    await registry.stop(program_id)
    await registry.wait(program_id, State.STOPPED, 120)
    return took


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "-n", cluster.namespace, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=180,
    )
    return result.stdout


def same_pod(stored: dict[str, Any], name: str) -> dict[str, Any]:
    pod = copy.deepcopy(stored)
    metadata = pod["metadata"]
    pod["metadata"] = {
        "name": name,
        "namespace": metadata["namespace"],
        # Not the Host's labels: the Host must not take it for one of its own.
        "labels": {"bench": "kubectl"},
    }
    pod.pop("status", None)
    pod["spec"].pop("nodeName", None)
    return pod


async def kubectl_start(
    cluster: Cluster, pod: dict[str, Any], http: aiohttp.ClientSession
) -> float:
    name = pod["metadata"]["name"]
    manifest = json.dumps(pod)
    started = time.monotonic()
    await asyncio.to_thread(kubectl, cluster, "apply", "-f", "-", stdin=manifest)
    address = ""
    while True:
        if not address:
            ip = await asyncio.to_thread(
                kubectl, cluster, "get", "pod", name, "-o", "jsonpath={.status.podIP}"
            )
            address = f"{ip.strip()}:8080" if ip.strip() else ""
        if address and await answers(http, address):
            break
        await asyncio.sleep(0.02)
        if time.monotonic() - started > 180:
            raise TimeoutError(f"Pod {name} never answered")
    took = time.monotonic() - started
    await asyncio.to_thread(
        kubectl, cluster, "delete", "pod", name, "--grace-period=0", "--wait=true"
    )
    return took


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--many", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="2 runs each, 4 at once")
    args = parser.parse_args()
    runs, many = (2, 4) if args.smoke else (args.runs, args.many)
    cluster = cluster_from_env(read_env(ENV_FILE))
    stub = build_stub()
    data_dir = Path(tempfile.mkdtemp(prefix="k8s-bench-"))
    config = HostConfig(
        data_dir=data_dir,
        runtime=Runtime.KUBERNETES,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        no_auth=True,
        docker=DockerSettings(ready_timeout=180, stop_grace=1, ready_poll_interval=0.02),
        kubernetes=KubernetesSettings(
            kubeconfig=cluster.host_kubeconfig,
            namespace=cluster.namespace,
            runtime_class=cluster.runtime_class,
            registry=cluster.registry,
            storage_class=cluster.storage_class,
        ),
    )
    print(f"load before: {os.getloadavg()}")
    async with (
        running_host(config) as (registry, _server),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
    ):
        made: list[str] = []
        try:
            program = await registry.create("bench", DOCKERFILE, {"watcher-stub": stub}, SMALL)
            made.append(program.id)
            first = await hershy_start(registry, program.id)  # the build, once
            print(f"first start (build + push + Pod): {first:.2f} s")
            # The Pod the Host made, as the API server stored it.
            await registry.start(program.id)
            ready = await registry.wait(program.id, State.READY, 180)
            stored = json.loads(kubectl(cluster, "get", "pod", ready.pod, "-o", "json"))
            await registry.stop(program.id)
            await registry.wait(program.id, State.STOPPED, 120)
            hershy: list[float] = []
            direct: list[float] = []
            for run in range(runs):
                pod = same_pod(stored, f"bench-{secrets.token_hex(3)}")
                sides = [("h", None), ("k", pod)] if run % 2 == 0 else [("k", pod), ("h", None)]
                for side, manifest in sides:
                    if side == "h":
                        hershy.append(await hershy_start(registry, program.id))
                    else:
                        assert manifest is not None
                        direct.append(await kubectl_start(cluster, manifest, http))
            print(f"start->Ready, median of {runs} (interleaved):")
            print(f"  hershy  {statistics.median(hershy):.2f} s  {[round(x, 2) for x in hershy]}")
            print(f"  kubectl {statistics.median(direct):.2f} s  {[round(x, 2) for x in direct]}")
            # N programs at once.
            batch = [
                await registry.create("bench", DOCKERFILE, {"watcher-stub": stub}, SMALL)
                for _ in range(many)
            ]
            made += [p.id for p in batch]
            started = time.monotonic()

            async def one(program_id: str) -> float:
                await registry.start(program_id)
                await registry.wait(program_id, State.READY, 600)
                return time.monotonic() - started

            each = await asyncio.gather(*(one(p.id) for p in batch))
            print(
                f"{many} programs created and started at once (builds included): all READY in "
                f"{max(each):.1f} s; each: median {statistics.median(each):.1f} s, "
                f"first {min(each):.1f} s"
            )
            nodes = {registry.get(p.id).node for p in batch}
            print(f"  placed on nodes: {sorted(nodes)}")
        finally:
            for program_id in made:
                try:
                    await registry.delete(program_id)
                    await registry.wait(program_id, State.DELETED, 180)
                except Exception as error:  # report, and go on cleaning
                    print(f"cleaning {program_id}: {error}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
