"""The dashboard's rollout view in a real headless Chromium (fake runtime).

A v2 deployed through the API shows up on the program's page by itself (the
rollout's phase, then the revisions list with v2 current); a rollback from the
page, confirmed, rolls revision 1 out again and the API says so. Another
tenant's token sees none of it: the page answers like a missing program, and
its revisions are not fetched for it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.browser.conftest import Browser, api, create_program, wait_ready
from tests.e2e.rest_support import RestHost, new_user

pytestmark = pytest.mark.browser
Factory = Callable[[RestHost], Browser]

DOCKERFILE = "FROM scratch\n"


def revision_rows(browser: Browser) -> list[str]:
    return [row.get_attribute("data-revision") or "" for row in browser.finds("tr[data-revision]")]


def test_rollout_and_revisions_appear_live_and_a_rollback_from_the_page(
    auth_host: RestHost, browser_factory: Factory
) -> None:
    user = new_user("rolla")
    program = create_program(auth_host, user)
    program_id = program["program_id"]
    assert api(auth_host, "POST", f"/programs/{program_id}/start")[0] == 200
    wait_ready(auth_host, program_id)

    browser = browser_factory(auth_host)
    browser.sign_in(auth_host.admin_token)
    browser.open(f"/ui/programs/{program_id}")
    browser.wait_for("#revisions-title", "Revisions")
    browser.wait_for("#rollout", "never redeployed")
    browser.wait(lambda: revision_rows(browser) == ["1"], "revision 1 listed")
    assert "current" in browser.find("tr[data-revision='1']").text

    # v2 through the API: the page follows it from the event stream, no reload.
    body = {"dockerfile": DOCKERFILE, "src_files": {"run": "v2\n"}}
    status, answer = api(auth_host, "POST", f"/programs/{program_id}/deploy", body)
    assert status == 202, answer
    browser.wait_for("#rollout", "Rollout revision 1 → 2")
    browser.wait_for("#rollout [data-phase=SUCCEEDED]")
    browser.wait(lambda: revision_rows(browser) == ["2", "1"], "revision 2 listed")
    newest = browser.find("tr[data-revision='2']")
    assert "current" in newest.text
    assert "deploy" in newest.text
    assert "source" in newest.text  # what it changed
    assert user in browser.find("tr[data-revision='1']").text

    # Roll back from the page: asked first, then a new revision 3 with revision 1's source.
    browser.find("button[name=rollback-1]").click()
    browser.find("button[name=cancel-rollback]").click()  # not yet
    assert api(auth_host, "GET", f"/programs/{program_id}")[1]["latest_revision_number"] == 2
    browser.find("button[name=rollback-1]").click()
    browser.find("button[name=confirm-rollback-1]").click()
    browser.wait_for("#rollback-answer", "rollback to revision 1: rolling out revision 3")
    browser.wait_for("#rollout", "Rollout revision 2 → 3")
    browser.wait_for("#rollout [data-phase=SUCCEEDED]")
    browser.wait(lambda: revision_rows(browser) == ["3", "2", "1"], "revision 3 listed")
    assert "rollback to revision 1" in browser.find("tr[data-revision='3']").text
    now = api(auth_host, "GET", f"/programs/{program_id}")[1]
    assert now["revision_number"] == 3
    assert now["build_id"] == program["build_id"]

    assert browser.console_errors() == []
    api(auth_host, "DELETE", f"/programs/{program_id}")


@pytest.mark.console_allows("429 (Too Many Requests)")
def test_a_rollback_refused_by_the_host_is_shown_inline(
    auth_host: RestHost, browser_factory: Factory
) -> None:
    user = new_user("rollb")
    program_id = create_program(auth_host, user)["program_id"]
    assert api(auth_host, "POST", f"/programs/{program_id}/start")[0] == 200
    wait_ready(auth_host, program_id)
    smaller = {"resources": {"memory_bytes": 128 * 1024 * 1024}}
    assert api(auth_host, "PATCH", f"/programs/{program_id}", smaller)[0] == 202
    browser = browser_factory(auth_host)
    browser.sign_in(auth_host.admin_token)
    browser.open(f"/ui/programs/{program_id}")
    browser.wait(lambda: revision_rows(browser) == ["2", "1"], "both revisions listed")
    browser.wait_for("#rollout [data-phase=SUCCEEDED]")
    # Revision 1's 512 MiB would pass the user's memory quota now: the Host refuses.
    quota = {"memory_bytes": 256 * 1024 * 1024}
    assert api(auth_host, "PUT", f"/users/{user}/quota", quota)[0] == 200
    browser.find("button[name=rollback-1]").click()
    browser.find("button[name=confirm-rollback-1]").click()
    answer = browser.wait_for("#rollback-answer", "rollback to revision 1:")
    assert "quota memory_bytes exceeded" in answer.text
    assert "failed" in (answer.get_attribute("class") or "")
    assert api(auth_host, "GET", f"/programs/{program_id}")[1]["latest_revision_number"] == 2
    api(auth_host, "DELETE", f"/programs/{program_id}")


def test_another_tenants_token_sees_no_rollout_nor_revisions(
    auth_host: RestHost, browser_factory: Factory
) -> None:
    owner, other = new_user("rollc"), new_user("rolld")
    program_id = create_program(auth_host, owner)["program_id"]
    body = {"dockerfile": DOCKERFILE, "src_files": {"run": "v2\n"}}
    assert api(auth_host, "POST", f"/programs/{program_id}/deploy", body)[0] == 202
    status, made = api(auth_host, "POST", "/tokens", {"user_id": other})
    assert status in (200, 201), made
    token = made["secret"]
    # Through the API with that token: the same answer as a missing program.
    assert api(auth_host, "GET", f"/programs/{program_id}/revisions", token=token)[0] == 404
    assert api(auth_host, "POST", f"/programs/{program_id}/rollback", token=token)[0] == 404

    browser = browser_factory(auth_host)
    browser.sign_in(token)
    browser.open(f"/ui/programs/{program_id}")
    browser.wait_for("[role=alert]", f"No program {program_id}")
    assert not browser.finds("#revisions")
    assert not browser.finds("#rollout")
    fetched = browser.script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => n.includes('/revisions'))"
    )
    assert fetched == []
    # Nothing of it changed.
    assert api(auth_host, "GET", f"/programs/{program_id}")[1]["latest_revision_number"] == 2
    api(auth_host, "DELETE", f"/programs/{program_id}")
