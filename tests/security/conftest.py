"""Security tests on the real Docker engine and runsc: the integration tests' fixtures."""

from tests.integration.conftest import (
    docker_client,
    host,
    stub_binary,
    unmount_left_state_volumes,
)

__all__ = ["docker_client", "host", "stub_binary", "unmount_left_state_volumes"]
