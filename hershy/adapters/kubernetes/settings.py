"""What `hershy serve --runtime kubernetes` is configured with, apart from the runtime itself.

Kept out of `runtime.py` so that the composition root and the CLI can name them
without importing the cluster client (lightkube) or docker-py: a Host on another
runtime never loads either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hershy.adapters.docker.settings import ProgramRunSettings


class RuntimeUnavailable(Exception):
    """The cluster (or Docker, which builds) cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class KubernetesSettings(ProgramRunSettings):
    #: The kubeconfig file the Host reaches the API server with (None: $KUBECONFIG, ~/.kube).
    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str = "hershy"
    runtime_class: str = "gvisor"
    #: The registry (HOST:PORT) images are pushed to, which the nodes pull from.
    registry: str = "127.0.0.1:5000"
    #: The StorageClass of the programs' /state claims (None: the cluster's default).
    storage_class: str | None = None
