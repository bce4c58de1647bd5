"""Security tests on the real Docker engine and runsc: the integration tests' fixtures."""

from tests.integration.conftest import docker_client, host, stub_binary

__all__ = ["docker_client", "host", "stub_binary"]
