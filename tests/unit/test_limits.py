"""Each limit is defined once (hershy/domain/limits.py): everything else that states one
states the same value. The docs are checked here too, so a changed limit fails until
its tables say so."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest

import hershy_client.limits as client_limits
from hershy.adapters.docker.build import BuildLimits
from hershy.domain import limits
from hershy.domain.model import BackoffPolicy
from hershy.domain.validation import ResourcePolicy, SourceLimits
from hershy.entrypoints import cli
from hershy.entrypoints.rest import openapi, uploads

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
REST_DOC = (ROOT / "docs" / "rest.md").read_text()


def mib(value: int) -> str:
    return f"{value // limits.MiB} MiB"


def gib(value: int) -> str:
    return f"{value // limits.GiB} GiB"


def test_the_client_reads_the_same_limits_as_the_host() -> None:
    shared = {
        name: getattr(client_limits, name)
        for name in dir(client_limits)
        if name.isupper() and not name.startswith("_")
    }
    assert shared, "the client's limits module is empty"
    for name, value in shared.items():
        assert getattr(limits, name) == value, name


def test_the_domain_defaults_are_the_limits() -> None:
    assert SourceLimits() == SourceLimits(
        limits.MAX_SOURCE_FILE_BYTES,
        limits.MAX_SOURCE_TOTAL_BYTES,
        limits.MAX_SOURCE_FILES,
        limits.MAX_SOURCE_PATH_BYTES,
        limits.MAX_SOURCE_PATH_DEPTH,
    )
    policy = ResourcePolicy()
    assert (policy.default, policy.minimum, policy.maximum) == (
        limits.DEFAULT_RESOURCES,
        limits.MIN_RESOURCES,
        limits.MAX_RESOURCES,
    )
    assert uploads.MAX_BODY_BYTES == limits.MAX_CREATE_BODY_BYTES


def _serve_defaults() -> dict[str, Any]:
    command = cli.main.commands["serve"]
    return {param.name: param.default for param in command.params if param.name}


def test_the_serve_options_default_to_the_build_limits_and_backoff() -> None:
    defaults = _serve_defaults()
    build = BuildLimits()
    assert defaults["build_memory"] * limits.MiB == build.memory_bytes
    assert defaults["build_pids"] == build.pids
    assert defaults["build_max_size"] * limits.MiB == build.max_image_bytes
    assert defaults["build_min_free_disk"] * limits.MiB == build.min_free_disk_bytes
    assert tuple(defaults["builds"]) == (build.max_concurrent, build.max_per_user)
    assert build.total_memory_bytes == limits.BUILD_TOTAL_MEMORY_FACTOR * build.memory_bytes
    assert build.total_pids == limits.BUILD_TOTAL_PIDS_FACTOR * build.pids
    policy = BackoffPolicy()
    assert tuple(defaults["backoff"]) == (policy.initial, policy.cap)


def test_serve_and_doctor_take_the_same_host_options() -> None:
    def options(name: str) -> dict[str, Any]:
        command = cli.main.commands[name]
        return {
            param.name: param.default
            for param in command.params
            if isinstance(param, click.Option)
            and param.name in ("data_dir", "grpc_addr", "http_addr", "runtime")
        }

    assert options("serve") == options("doctor")
    assert len(options("serve")) == 4


def test_the_openapi_document_states_the_limits() -> None:
    document = openapi.DOCUMENT
    listing = {p["name"]: p for p in document["paths"]["/programs"]["get"]["parameters"]}
    assert listing["page_size"]["schema"]["maximum"] == limits.MAX_PAGE_SIZE
    assert str(limits.DEFAULT_PAGE_SIZE) in listing["page_size"]["description"]
    waiting = {
        p["name"]: p for p in document["paths"]["/programs/{program_id}/wait"]["get"]["parameters"]
    }
    assert waiting["timeout"]["schema"]["maximum"] == limits.MAX_WAIT_SECONDS
    create = document["components"]["schemas"]["CreateProgram"]["properties"]["user_id"]
    assert create["pattern"] == f"^{limits.USER_ID_PATTERN}$"
    program_id = document["paths"]["/programs/{program_id}"]["get"]["parameters"][0]
    assert program_id["schema"]["pattern"] == f"^{limits.PROGRAM_ID_PATTERN}$"


@pytest.mark.parametrize(
    ("doc", "text"),
    [
        ("README", f"`page_size` ≤ {limits.MAX_PAGE_SIZE}"),
        ("README", f"default timeout {limits.DEFAULT_WAIT_SECONDS:g} s, at most 1 h"),
        ("README", f"user id `{limits.USER_ID_PATTERN}`"),
        ("README", f"at most {limits.MAX_SOURCE_PATH_BYTES} bytes and"),
        ("README", f"{limits.MAX_SOURCE_PATH_DEPTH} levels"),
        (
            "README",
            f"at most {mib(limits.MAX_SOURCE_FILE_BYTES)} per file, "
            f"{mib(limits.MAX_SOURCE_TOTAL_BYTES)} in all, {limits.MAX_SOURCE_FILES:,} files",
        ),
        ("README", f"A user has at most {limits.MAX_CREATES_IN_PROGRESS_PER_USER} creates"),
        (
            "README",
            f"defaults {limits.DEFAULT_RESOURCES.pids} / "
            f"{mib(limits.DEFAULT_RESOURCES.memory_bytes)} / "
            f"{limits.DEFAULT_RESOURCES.milli_cpus // 1000} CPU / "
            f"{gib(limits.DEFAULT_RESOURCES.state_bytes)}",
        ),
        (
            "README",
            f"({limits.MAX_RESOURCES.pids} / {gib(limits.MAX_RESOURCES.memory_bytes)} / "
            f"{limits.MAX_RESOURCES.milli_cpus // 1000} CPUs / "
            f"{gib(limits.MAX_RESOURCES.state_bytes)})",
        ),
        (
            "README",
            f"{mib(limits.MIN_RESOURCES.state_bytes)} to {gib(limits.MAX_RESOURCES.state_bytes)}",
        ),
        (
            "README",
            f"| `{limits.BUILD_MEMORY_BYTES // limits.MiB}` / `{limits.BUILD_PIDS}` |",
        ),
        ("README", f"| `{limits.BUILD_MAX_IMAGE_BYTES // limits.MiB}` |"),
        ("README", f"| `{limits.BUILD_MIN_FREE_DISK_BYTES // limits.MiB}` |"),
        ("README", f"| `{limits.BUILDS_AT_ONCE} {limits.BUILDS_AT_ONCE_PER_USER}` |"),
        (
            "README",
            f"| `{BackoffPolicy().initial:g} {BackoffPolicy().cap:g}` |",
        ),
        (
            "docs/rest.md",
            f"(default {limits.DEFAULT_PAGE_SIZE}, at most {limits.MAX_PAGE_SIZE})",
        ),
        (
            "docs/rest.md",
            f"(default {gib(limits.DEFAULT_RESOURCES.state_bytes)}, "
            f"{mib(limits.MIN_RESOURCES.state_bytes)} to {gib(limits.MAX_RESOURCES.state_bytes)};",
        ),
        (
            "docs/rest.md",
            f"A body over {limits.MAX_CREATE_BODY_BYTES // limits.MiB} MiB (the core's "
            f"{mib(limits.MAX_SOURCE_TOTAL_BYTES)} of files",
        ),
        (
            "docs/rest.md",
            f"A user has at most {limits.MAX_CREATES_IN_PROGRESS_PER_USER} creates in progress",
        ),
        ("docs/rest.md", f"One answer holds at most {mib(limits.MAX_JSON_LOG_BYTES)} of"),
        ("docs/rest.md", f"user ids are `^{limits.USER_ID_PATTERN}$`"),
    ],
)
def test_the_docs_state_the_limits(doc: str, text: str) -> None:
    body = README if doc == "README" else REST_DOC
    assert text in re.sub(r"\s+", " ", body), f"{doc} should say: {text}"
