"""Entrypoints: the gRPC server, the REST shim and the command line."""
