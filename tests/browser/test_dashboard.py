"""The dashboard in a real headless Chromium against a real `hershy serve --runtime fake`.

Each test drives the page as a person would (sign in, click, type) and reads
what it shows; the console of every page must stay free of errors (conftest).
Set HERSHY_SCREENSHOT=PATH to save the screenshot the README shows.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import (
    HOSTILE,
    Browser,
    ThreadedWatcher,
    api,
    create_program,
    wait_ready,
    watcher_for,
)
from tests.e2e.rest_support import RestHost, new_user

pytestmark = pytest.mark.browser
Factory = Callable[[RestHost], Browser]
#: How many programs a test may deploy before one gets a WatcherAPI port nobody else holds.
PORT_ATTEMPTS = 8


def mark_page(browser: Browser) -> None:
    """A marker in the page's memory: still there later means the page was never reloaded."""
    browser.script("window.__sameDocument = 'yes'")


def still_same_page(browser: Browser) -> bool:
    return bool(browser.script("return window.__sameDocument === 'yes'"))


def badge_in_title(browser: Browser) -> str:
    return str(browser.find("h1 .badge").text) if browser.finds("h1 .badge") else ""


def deploy_from_page(browser: Browser, user: str, content: str) -> str:
    """Paste a Dockerfile and a file on the deploy page; returns the id it lands on."""
    browser.click_link("Deploy")
    browser.wait_for("h1", "Deploy a program")
    browser.fill("input[name=user_id]", user)
    browser.fill("input[name=file-name-0]", "run")
    browser.fill("textarea[name=file-content-0]", content)
    browser.click_button("Deploy")
    url: str = browser.wait(
        lambda: (
            browser.driver.current_url
            if "/ui/programs/prog-" in browser.driver.current_url
            else None
        ),
        "the program's page after deploying",
    )
    return url.rsplit("/", 1)[1]


def ready_with_watcher(
    browser: Browser, host: RestHost, user: str, *, hostile: bool = False
) -> tuple[str, ThreadedWatcher]:
    """Deploy from the page until a program's WatcherAPI port is free for our fake program.

    Other Hosts on this machine (other test runs) may hold some of the ports every
    Host hands out from 19001 up; a program whose port is taken is deleted and the
    next one tried.
    """
    for _ in range(PORT_ATTEMPTS):
        program_id = deploy_from_page(browser, user, "#!/bin/sh\necho hello\n")
        browser.wait(lambda: badge_in_title(browser) == "Ready", "the program to be Ready")
        watcher = watcher_for(wait_ready(host, program_id), hostile=hostile)
        if watcher is not None:
            return program_id, watcher
        assert api(host, "DELETE", f"/programs/{program_id}")[0] == 200
    pytest.fail(f"no free WatcherAPI port in {PORT_ATTEMPTS} programs")


def program_rows(browser: Browser) -> set[str]:
    return {
        str(row.get_attribute("data-program-id")) for row in browser.finds("tr[data-program-id]")
    }


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.console_allows("409 (Conflict)")
def test_deploy_reach_ready_message_stop_restart_delete(
    auth_host: RestHost, browser_factory: Factory
) -> None:
    browser = browser_factory(auth_host)
    browser.sign_in(auth_host.admin_token)
    mark_page(browser)
    user = new_user("ui")
    program_id, watcher = ready_with_watcher(browser, auth_host, user)
    try:
        # Reached Ready from the event stream: the page was never reloaded.
        assert still_same_page(browser)
        assert browser.find("#connection").text.endswith("live")
        timeline = browser.find("#timeline").text
        for state in ("Building", "Starting", "Ready"):
            assert state in timeline, timeline
        browser.wait_for("#program-log", "fake program: ready")
        browser.wait_for("#source-content", "FROM scratch")

        # A request the state does not allow: the API's reason, inline (no alert box).
        browser.click_button("Start")
        answer = browser.wait_for("#lifecycle-answer", "409")
        assert "WRONG_STATE" in answer.text, answer.text
        assert "Ready" in answer.text, answer.text
        assert answer.get_attribute("role") == "alert"
        assert not browser.alert_open()

        # The WatcherAPI through the proxy: its views, then a message and its reply.
        browser.click_link("WatcherAPI")
        browser.wait_for("#view-status", '"isRunning": true')
        browser.wait_for("#view-varState", '"count"')
        browser.wait_for("#view-config", "serverPort")
        browser.wait_for("#view-logs", "effectLogs")
        browser.fill("input[name=message]", "add 1000")
        browser.click_button("Send")
        assert browser.wait_for("#message-reply", "echo").text == "echo: add 1000"
        assert watcher.messages == ["add 1000"]
        if path := os.environ.get("HERSHY_SCREENSHOT_WATCHER"):
            browser.driver.save_screenshot(path)

        browser.click_link(program_id)
        browser.wait(lambda: badge_in_title(browser) == "Ready", "the program page again")
        browser.click_button("Stop")
        browser.wait(lambda: badge_in_title(browser) == "Stopped", "Stopped")
        assert "stop: accepted" in browser.find("#lifecycle-answer").text
        browser.click_button("Restart")
        browser.wait(lambda: badge_in_title(browser) == "Ready", "Ready after the restart")
        assert "restart: accepted" in browser.find("#lifecycle-answer").text
        if path := os.environ.get("HERSHY_SCREENSHOT"):
            browser.wait_for("#program-log", "fake program: ready")
            browser.driver.save_screenshot(path)

        browser.click_button("Delete")
        browser.click_button(f"Really delete {program_id}")
        browser.wait_for("h1", "Programs")
        browser.wait(lambda: program_id not in program_rows(browser), "the row to go")
        assert still_same_page(browser)
    finally:
        watcher.stop()
    status, gone = api(auth_host, "GET", f"/programs/{program_id}")
    assert status == 404, gone


def test_the_list_is_live_filtered_and_searched(
    auth_host: RestHost, browser_factory: Factory
) -> None:
    browser = browser_factory(auth_host)
    browser.sign_in(auth_host.admin_token)
    mark_page(browser)
    browser.wait_for("#program-count", "programs")
    first, second = new_user("left"), new_user("right")
    one = create_program(auth_host, first)["program_id"]
    two = create_program(auth_host, second)["program_id"]
    # Programs made elsewhere (the API) appear without a reload.
    browser.wait(lambda: {one, two} <= program_rows(browser), "both new programs in the list")
    assert still_same_page(browser)
    browser.fill("input[name=search]", first)
    browser.wait(
        lambda: one in program_rows(browser) and two not in program_rows(browser), "search"
    )
    browser.fill("input[name=search]", "")
    api(auth_host, "POST", f"/programs/{two}/start")
    wait_ready(auth_host, two)
    browser.choose("select[name=state]", "Ready")
    browser.wait(
        lambda: two in program_rows(browser) and one not in program_rows(browser), "filter"
    )
    row = browser.find(f"tr[data-program-id={two}]").text
    for shown in ("Ready", second, "fake"):
        assert shown in row, row
    for program_id in (one, two):
        assert api(auth_host, "DELETE", f"/programs/{program_id}")[0] == 200
    browser.wait(lambda: not ({one, two} & program_rows(browser)), "deleted programs to go")


def test_a_users_token_sees_only_their_programs(
    auth_host: RestHost, browser_factory: Factory
) -> None:
    mine, theirs = new_user("carol"), new_user("dave")
    my_program = create_program(auth_host, mine)["program_id"]
    their_program = create_program(auth_host, theirs)["program_id"]

    # The admin makes carol's token on the Tokens page and reads its secret once.
    admin = browser_factory(auth_host)
    admin.sign_in(auth_host.admin_token)
    admin.click_link("Tokens")
    admin.fill("input[name=token-user]", mine)
    admin.click_button("Create token")
    secret = admin.wait(
        lambda: (
            admin.find("#new-token-secret").get_attribute("value")
            if admin.finds("#new-token-secret")
            else None
        ),
        "the new token's secret",
    )
    assert secret.startswith("hershy_")
    admin.click_link("Programs")
    admin.wait(lambda: {my_program, their_program} <= program_rows(admin), "admin sees both")

    carol = browser_factory(auth_host)
    carol.sign_in(secret)
    assert carol.find("#who").text == mine
    carol.wait_for("#program-count", "programs")
    assert program_rows(carol) == {my_program}
    assert not carol.finds("select[name=user]")  # no user filter: there is nobody else to see
    assert "Tokens" not in carol.find("nav").text
    # Another user's program by its address: the same answer as a missing one.
    carol.open(f"/ui/programs/{their_program}")
    carol.wait_for("[role=alert]", f"No program {their_program}")
    # A program made for dave later never reaches carol's page.
    late = create_program(auth_host, theirs)["program_id"]
    carol.open("/ui/programs")
    carol.wait_for("#program-count", "programs")
    admin.wait(lambda: late in program_rows(admin), "admin sees the late one")
    assert program_rows(carol) == {my_program}
    # The token is in this tab's sessionStorage only: no cookie, nothing in the URL.
    assert carol.driver.get_cookies() == []
    assert carol.script("return sessionStorage.getItem('hershy.token')") == secret
    assert "hershy_" not in carol.driver.current_url

    # Revoked on the Tokens page: carol's page is sent back to sign in.
    admin.click_link("Tokens")
    row = admin.wait_for("tr[data-token-id]", mine)
    token_id = row.get_attribute("data-token-id")
    admin.click_button(f"Revoke {token_id}")
    admin.wait_for("#tokens-answer", f"revoked {token_id}")
    carol.open("/ui/programs")
    carol.wait_for("[role=alert]", "UNAUTHENTICATED")
    assert carol.script("return sessionStorage.getItem('hershy.token')") is None
    for program_id in (my_program, their_program, late):
        api(auth_host, "DELETE", f"/programs/{program_id}")
    # Carol's console saw the 401 that signed her out: that one is expected.
    carol.console = [e for e in carol.read_console() if "401 (Unauthorized)" not in e["message"]]


def test_a_wrong_token_is_refused_on_the_sign_in_page(
    auth_host: RestHost, browser_factory: Factory
) -> None:
    browser = browser_factory(auth_host)
    browser.open("/ui/programs")
    browser.fill("input[name=token]", "hershy_" + "0" * 43)
    browser.click_button("Sign in")
    browser.wait_for("[role=alert]", "UNAUTHENTICATED")
    assert browser.script("return sessionStorage.getItem('hershy.token')") is None
    assert not browser.finds("#who")
    browser.console = [
        e for e in browser.read_console() if "401 (Unauthorized)" not in e["message"]
    ]


def test_a_hostile_programs_answers_render_as_text(
    open_host: RestHost, browser_factory: Factory
) -> None:
    browser = browser_factory(open_host)
    browser.open("/ui/")  # --no-auth: no sign-in at all
    browser.wait_for("#who", "admin")
    program_id, watcher = ready_with_watcher(browser, open_host, new_user("evil"), hostile=True)
    try:
        browser.click_link("WatcherAPI")
        status = browser.wait_for("#view-status", "<script>")
        assert HOSTILE in status.text
        browser.wait_for("#view-logs", "<img src=x")
        browser.fill("input[name=message]", "hi")
        browser.click_button("Send")
        assert browser.wait_for("#message-reply", "<script>").text == HOSTILE
        # Nothing the program sent became markup, and none of its script ran.
        assert browser.finds("#injected") == []
        assert browser.finds("main script, main img") == []
        assert browser.script("return window.__pwned") is None
        assert not browser.alert_open()

        # Opened directly, the program's own HTML page is sandboxed: its script cannot run
        # on the dashboard's origin (where the token lives).
        browser.open(f"/programs/{program_id}/watcher/page")
        browser.wait(lambda: browser.driver.title == "program page", "the program's page")
        assert browser.script("return window.__pwned") is None
        assert browser.script("return window.origin") == "null"  # an opaque origin
    finally:
        watcher.stop()
    api(open_host, "DELETE", f"/programs/{program_id}")
    # The sandboxed page's blocked script is reported on the console: that is the defence.
    browser.console = [
        entry
        for entry in browser.read_console()
        if "sandboxed" not in entry["message"] and "allow-scripts" not in entry["message"]
    ]


def test_the_original_path_and_a_phone_sized_window(
    open_host: RestHost, browser_factory: Factory
) -> None:
    program = create_program(open_host, new_user("phone"))
    browser = browser_factory(open_host)
    browser.driver.set_window_size(390, 844)
    browser.open("/ui/programs")  # the original system's path
    browser.wait(lambda: program["program_id"] in program_rows(browser), "the program")
    # Nothing is wider than the screen: the table turns into one card per program.
    width = browser.script("return document.documentElement.scrollWidth")
    assert width <= 390, width
    # Keyboard: Tab reaches the skip link first, and it leads to the content.
    browser.find("body").send_keys("\ue004")  # Tab
    focused: Any = browser.script("return document.activeElement.textContent")
    assert focused == "Skip to content"
    browser.open(f"/ui/programs/{program['program_id']}")
    browser.wait_for("h1", program["program_id"])
    assert browser.script("return document.documentElement.scrollWidth") <= 390
    # Every field has a label (the checkboxes of the log filter, the lifecycle, ...).
    unlabelled = browser.script(
        "return [...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))"
        ".map(e => e.name)"
    )
    assert unlabelled == []
    api(open_host, "DELETE", f"/programs/{program['program_id']}")


# The folder upload is not driven here: chromedriver fills a `webkitdirectory`
# input, but headless Chromium then fails to read the files ("A requested file
# or directory could not be found"); the tar below is the same context.
@pytest.mark.parametrize("mode", ["tar"])
def test_deploy_a_tar_or_a_folder(
    open_host: RestHost, browser_factory: Factory, tmp_path: Path, mode: str
) -> None:
    folder = tmp_path / "bot"
    (folder / "app").mkdir(parents=True)
    (folder / "Dockerfile").write_text("FROM scratch\nCOPY . /app\n")
    (folder / "app" / "config.json").write_text('{"from": "the folder"}')
    (folder / "logo.bin").write_bytes(bytes(range(256)))
    chosen = folder
    if mode == "tar":
        chosen = tmp_path / "bot.tar"
        with tarfile.open(chosen, "w") as tar:
            tar.add(folder, arcname=".")
    browser = browser_factory(open_host)
    browser.open("/ui/deploy")
    browser.fill("input[name=user_id]", new_user(mode))
    label = "Upload a tar" if mode == "tar" else "Upload a folder"
    browser.wait_for("label", label).click()
    browser.find(f"input[name={mode}]").send_keys(str(chosen))
    browser.click_button("Deploy")
    browser.wait(lambda: "/ui/programs/prog-" in browser.driver.current_url, "the program page")
    program_id = browser.driver.current_url.rsplit("/", 1)[1]
    browser.wait(lambda: badge_in_title(browser) == "Ready", "Ready")
    browser.wait_for("#source-content", "COPY . /app")
    status, source = api(open_host, "GET", f"/programs/{program_id}/source")
    assert status == 200, source
    assert source["src_files"]["app/config.json"] == '{"from": "the folder"}'
    assert "logo.bin" in {**source["src_files"], **source["src_files_base64"]}
    browser.choose("select[name=source-file]", "app/config.json")
    browser.wait_for("#source-content", "the folder")
    api(open_host, "DELETE", f"/programs/{program_id}")
