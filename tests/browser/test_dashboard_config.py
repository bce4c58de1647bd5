"""The dashboard's Configuration section in a real headless Chromium (fake runtime, no auth).

Rename a program, set and remove an environment variable, set and delete a
secret: each through the page, checked against the API; the secret's value is
never shown on the page nor kept in its fields once sent.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from tests.browser.conftest import Browser, api, create_program
from tests.e2e.rest_support import RestHost, new_user

pytestmark = pytest.mark.browser
Factory = Callable[[RestHost], Browser]


def test_rename_env_and_secrets_from_the_program_page(
    open_host: RestHost, browser_factory: Factory
) -> None:
    program_id = create_program(open_host, new_user("erin"))["program_id"]
    browser = browser_factory(open_host)
    browser.open(f"/ui/programs/{program_id}")
    browser.wait_for("#config-title", "Configuration")

    browser.fill("input[name=alias]", "page-bot")
    browser.click_button("Rename")
    browser.wait_for("#config-answer", "now named page-bot")
    browser.wait_for("[data-fact=Name]", "page-bot")
    assert api(open_host, "GET", f"/programs/{program_id}")[1]["alias"] == "page-bot"

    browser.fill("input[name=env-name]", "MODE")
    browser.fill("input[name=env-value]", "live")
    browser.click_button("Set")
    browser.wait_for("#program-env", "MODE")
    assert api(open_host, "GET", f"/programs/{program_id}")[1]["environment"] == {"MODE": "live"}
    browser.find("button[name=unset-MODE]").click()
    browser.wait_for("#config-answer", "unset MODE: removed")
    browser.wait(lambda: "MODE" not in browser.find("#program-env").text, "MODE gone")

    value = "sk-page-" + secrets.token_hex(8)
    browser.fill("input[name=secret-name]", "API_KEY")
    browser.fill("input[name=secret-value]", value)
    browser.click_button("Set secret")
    browser.wait_for("#config-answer", "version 1 set")
    browser.wait_for("#program-secrets", "API_KEY")
    assert browser.find("input[name=secret-value]").get_attribute("value") == ""
    assert value not in browser.driver.page_source
    status, listed = api(open_host, "GET", f"/programs/{program_id}/secrets")
    assert status == 200
    assert [secret["name"] for secret in listed["secrets"]] == ["API_KEY"]
    browser.find("button[name=delete-secret-API_KEY]").click()
    browser.wait_for("#config-answer", "delete API_KEY: removed")
    browser.wait(lambda: "API_KEY" not in browser.find("#program-secrets").text, "secret gone")
    api(open_host, "DELETE", f"/programs/{program_id}")
