"""The `:9000` REST shim and the WatcherAPI reverse proxy, over the gRPC core."""

from hershy.entrypoints.rest.app import RestConfig, RestServer

__all__ = ["RestConfig", "RestServer"]
