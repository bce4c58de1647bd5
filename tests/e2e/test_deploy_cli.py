"""`hershy deploy --name` (update in place), `rollout status`, `history`, `rollback`: the real
console script against `hershy serve --runtime fake` with tokens on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli import (
    NOT_FOUND,
    OK,
    USAGE,
    CliHost,
    cli,
    get_json,
    new_token,
    one_line_error,
    running_host,
    source_files,
)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliHost]:
    with running_host(tmp_path_factory.mktemp("hershy-deploy-cli")) as running:
        yield running


def version_folder(base: Path, text: str) -> Path:
    folder = base / text
    folder.mkdir()
    (folder / "Dockerfile").write_text("FROM scratch\nCOPY . /app\n")
    (folder / "version.txt").write_text(text + "\n")
    return folder


def test_deploy_by_name_updates_in_place_and_rolls_back(host: CliHost, tmp_path: Path) -> None:
    token = new_token(host, "carol")
    first = cli(host, token, "deploy", str(version_folder(tmp_path, "v1")), "--timeout", "20")
    program_id = first.stdout.strip()
    assert get_json(host, token, program_id)["state"] == "STATE_READY"

    # The same program, a new revision: same id, the new source.
    second = cli(
        host,
        token,
        "deploy",
        str(version_folder(tmp_path, "v2")),
        "--name",
        program_id,
        "--memory",
        "256MiB",
        "--timeout",
        "20",
    )
    assert second.stdout.strip() == program_id, second
    assert "revision 1 → 2" in second.stderr, second
    now = get_json(host, token, program_id)
    assert now["revision_number"] == "2"
    assert now["rollout"]["phase"] == "ROLLOUT_PHASE_SUCCEEDED"
    assert now["resources"]["memory_bytes"] == str(256 * 1024 * 1024)
    assert source_files(host, program_id).src_files["version.txt"] == b"v2\n"

    status = cli(host, token, "rollout", "status", program_id)
    assert "revision 1 → 2 SUCCEEDED" in status.stdout, status

    history = cli(host, token, "history", program_id)
    lines = [line for line in history.stdout.splitlines() if line.strip()]
    assert lines[0].split()[:2] == ["REV", "BUILD"], history
    assert lines[1].lstrip().startswith("*2"), history
    assert "deploy" in lines[1]
    assert "carol" in lines[1]
    assert lines[2].lstrip().startswith("1")
    assert "create" in lines[2]

    back = cli(host, token, "rollback", program_id, "--timeout", "20")
    assert back.stdout.split()[0] == program_id, back
    rolled = get_json(host, token, program_id)
    assert rolled["revision_number"] == "3"
    assert source_files(host, program_id).src_files["version.txt"] == b"v1\n"
    as_json = cli(host, token, "history", program_id, "--json").json()
    assert next(r["description"] for r in as_json["revisions"]) == "rollback to revision 1"

    missing = cli(host, token, "rollback", program_id, "42", expect=NOT_FOUND)
    assert "revision 42" in one_line_error(missing)
    cli(host, token, "rollback", program_id, "0", expect=USAGE)


def test_another_users_program_is_not_found_by_name(host: CliHost, tmp_path: Path) -> None:
    owner, other = new_token(host, "dave"), new_token(host, "erin")
    mine = str(version_folder(tmp_path, "mine"))
    program_id = cli(host, owner, "deploy", mine, "--name", "bot").stdout.strip()
    for args in (
        ("history", program_id),
        ("rollout", "status", program_id),
        ("rollback", program_id),
    ):
        cli(host, other, *args, expect=NOT_FOUND)
    # By name, another user's program is not there: a deploy makes erin's own (names
    # are unique per user); by id, it is not there either, and an id names nothing new.
    theirs_folder = str(version_folder(tmp_path, "theirs"))
    theirs = cli(host, other, "deploy", theirs_folder, "--name", "bot")
    assert theirs.code == OK
    assert theirs.stdout.strip() != program_id
    cli(host, other, "deploy", theirs_folder, "--name", program_id, expect=USAGE)
    assert get_json(host, owner, program_id)["revision_number"] == "1"


def test_update_changes_only_what_it_is_given_as_a_revision(host: CliHost, tmp_path: Path) -> None:
    token = new_token(host, "fay")
    folder = str(version_folder(tmp_path, "u1"))
    program_id = cli(host, token, "deploy", folder, "--name", "upd", "--timeout", "20").stdout
    program_id = program_id.strip()
    before = get_json(host, token, program_id)
    updated = cli(
        host,
        token,
        "update",
        "programs/upd",
        "--restart",
        "on-failure",
        "--memory",
        "256MiB",
        "--ready-timeout",
        "30",
        "--stop-signal",
        "sigint",
        "--timeout",
        "20",
    )
    assert updated.stdout.split()[0] == program_id, updated
    assert "revision 1 → 2 SUCCEEDED" in updated.stderr, updated
    now = get_json(host, token, program_id)
    assert now["revision_number"] == "2"
    assert now["restart_policy"]["mode"] == "RESTART_MODE_ON_FAILURE"
    assert now["resources"]["memory_bytes"] == str(256 * 1024 * 1024)
    assert now["readiness"]["timeout"] == "30s"
    assert now["stop"]["signal"] == "SIGINT"
    assert now["readiness"]["path"] == before["readiness"]["path"]  # not given: kept
    assert now["resources"]["milli_cpus"] == before["resources"]["milli_cpus"]

    as_json = cli(host, token, "history", program_id, "--json").json()
    newest = as_json["revisions"][0]
    assert set(newest["changed_fields"]) == {
        "readiness.timeout",
        "restart_policy.mode",
        "stop.signal",
        "resources.memory_bytes",
    }
    history = cli(host, token, "history", program_id)
    assert "restart_policy.mode" in history.stdout, history

    cli(host, token, "update", program_id, expect=USAGE)  # nothing to change
    # A redeploy carries source; settings given to it are refused, naming `hershy update`.
    redeploy = cli(
        host, token, "deploy", folder, "--name", "upd", "--restart", "never", expect=USAGE
    )
    assert "hershy update upd" in redeploy.stderr, redeploy
    assert get_json(host, token, program_id)["latest_revision_number"] == "2"
    refused = cli(host, token, "update", program_id, "--stop-signal", "SIGSEGV", expect=USAGE)
    assert "stop.signal" in one_line_error(refused)
    cli(host, new_token(host, "gus"), "update", program_id, "--cpus", "1", expect=NOT_FOUND)

    cli(host, token, "rollback", program_id, "1", "--timeout", "20")
    back = get_json(host, token, program_id)
    for field in ("restart_policy", "resources", "readiness", "stop"):
        assert back.get(field) == before.get(field), field
