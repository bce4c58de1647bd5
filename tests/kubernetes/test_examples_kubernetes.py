"""The examples deployed with `hershy deploy` onto `hershy serve --runtime kubernetes` (tokens on).

As tests/integration/test_examples_e2e.py does on Docker, on the real cluster:
deploy the folder, READY, `/watcher/status` through the Host's REST proxy, a
message sent with `hershy send` and its effect seen (the counter moves, the
echo is logged), `hershy get` says where it runs (node, pod), a stop and a
restart keep `/state`, and `hershy rm --wait` leaves nothing on the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.integration.conftest import images_of
from tests.integration.test_examples_e2e import (
    DEPLOY_TIMEOUT,
    EFFECTS,
    NOT_FOUND,
    RealHost,
    build_example,
    serving_host,
)
from tests.kubernetes.cluster import Cluster, cluster_leftovers, pods_of

pytestmark = [pytest.mark.docker, pytest.mark.kubernetes]


@pytest.fixture(scope="module")
def k8s_cli_host(
    tmp_path_factory: pytest.TempPathFactory, kubernetes_cluster: Cluster
) -> Iterator[RealHost]:
    base = tmp_path_factory.mktemp("hershy-k8s-examples")
    with serving_host(base, *kubernetes_cluster.serve_args(), ready_timeout=90) as up:
        secret = up.cli("token", "create", "examples", token=up.admin_token).stdout
        up.user_token = secret.strip()
        yield up


@pytest.mark.parametrize("example", ["simple-counter", "watcher-server"])
async def test_deploy_an_example_onto_kubernetes(
    k8s_cli_host: RealHost,
    kubernetes_cluster: Cluster,
    docker_client: docker.DockerClient,
    example: str,
) -> None:
    host = k8s_cli_host
    folder = build_example(example)
    deployed = host.cli("deploy", str(folder), "--timeout", DEPLOY_TIMEOUT)
    program_id = deployed.stdout.strip()
    assert program_id.startswith("prog-"), deployed
    host.created.append(program_id)

    program = host.cli("get", program_id, "--json").json()
    assert program["state"] == "STATE_READY"
    assert program["runtime"].startswith("runsc (gVisor) on Kubernetes"), program["runtime"]
    assert program["node"] in kubernetes_cluster.nodes, program
    assert program["pod"].startswith("hershy-"), program
    shown = host.cli("get", program_id).stdout
    assert program["node"] in shown
    assert program["pod"] in shown
    host_id = _host_id(program["pod"], kubernetes_cluster, program_id)

    status = host.watcher(program_id, "status")
    assert status["isRunning"] is True, status
    assert status["watcherID"] == example
    still_kept = EFFECTS[example](host, program_id)  # the message, through the proxy

    stopped = host.cli("stop", program_id, "--wait", "--json").json()
    assert stopped["state"] == "STATE_STOPPED"
    assert await pods_of(kubernetes_cluster, host_id, program_id) == []
    restarted = host.cli("restart", program_id, "--wait", "--json").json()
    assert restarted["state"] == "STATE_READY"
    still_kept(host.variables(program_id))  # /state (its claim) survived

    deleted = host.cli("rm", program_id, "--yes", "--wait", "--json").json()
    assert deleted["state"] == "STATE_DELETED"
    host.cli("get", program_id, expect=NOT_FOUND)
    assert await cluster_leftovers(kubernetes_cluster, host_id, program_id) == []
    assert images_of(docker_client, program_id) == []


def _host_id(pod: str, cluster: Cluster, program_id: str) -> str:
    """The Host id, from its Pod's managed label (the CLI does not show it)."""
    raw = cluster.kubectl(
        "get", "pod", pod, "-o", "jsonpath={.metadata.labels.dev\\.hershy\\.managed}"
    )
    assert raw, f"no Host label on Pod {pod} of {program_id}"
    return raw.strip()
