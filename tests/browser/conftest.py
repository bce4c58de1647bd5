"""Browser fixtures: Debian's headless `chromium`, driven by Selenium through `chromidriver`.

The page is the real dashboard bundle (dashboard/dist, built by scripts/setup.sh)
served by a real `hershy serve --runtime fake`. In fake mode nothing listens on a
program's WatcherAPI port, so a test plays the program with `ThreadedWatcher`: a
real HTTP server on that port, reached through the Host's proxy. Nothing here
skips: without chromium, chromedriver or the bundle the tests fail saying how
to set the machine up. Every test ends by reading the browser's console: any
error there fails it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from hershy.entrypoints.rest.ui import DIST_DIR
from tests.e2e.rest_support import DOCKERFILE, RestHost, running_rest_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SETUP_HINT = (
    "run scripts/setup.sh: it installs Debian's chromium and chromium-driver and bundles the "
    "dashboard into dashboard/dist"
)
#: How long the page gets to show what a test waits for (the fake runtime is fast).
WAIT_SECONDS = 15.0

pytestmark = pytest.mark.browser

# --- the Host ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    """A Host with tokens on; the admin's token in `admin_token`."""
    with running_rest_server(tmp_path_factory.mktemp("hershy-ui-auth"), auth=True) as host:
        yield host


@pytest.fixture(scope="module")
def open_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    """A Host with --no-auth (loopback only: every caller is the admin)."""
    with running_rest_server(tmp_path_factory.mktemp("hershy-ui-open")) as host:
        yield host


def api(
    host: RestHost, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """A blocking REST call (the browser tests are synchronous); the status and the JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{host.url}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    token = host.admin_token if token is None else token
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def create_program(host: RestHost, user: str, token: str | None = None) -> dict[str, Any]:
    status, program = api(
        host,
        "POST",
        "/programs",
        {"user_id": user, "dockerfile": DOCKERFILE, "src_files": {"run": "hi\n"}},
        token,
    )
    assert status == 201, program
    answer: dict[str, Any] = program
    return answer


def wait_ready(host: RestHost, program_id: str) -> dict[str, Any]:
    status, program = api(host, "GET", f"/programs/{program_id}/wait?state=ready&timeout=10")
    assert status == 200, program
    answer: dict[str, Any] = program
    return answer


def target_port(program: dict[str, Any]) -> int:
    return int(program["proxy_target"].rsplit(":", 1)[1])


# --- a program's WatcherAPI ---------------------------------------------------------------

#: What a hostile program answers: markup that would run script if it were ever treated as HTML.
HOSTILE = (
    "<script>window.__pwned = 1; alert('pwned')</script>"
    "<img src=x onerror=window.__pwned=2><b id=injected>bold</b>"
)


@dataclass
class ThreadedWatcher:
    """A WatcherAPI shaped like Hersh v0.2.0's, on `port`, in a thread of its own."""

    port: int
    hostile: bool = False
    messages: list[str] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    def _text(self, value: str) -> str:
        return HOSTILE if self.hostile else value

    def _app(self) -> web.Application:
        app = web.Application()

        def answer(body: Callable[[], dict[str, Any]]) -> Any:
            async def handler(request: web.Request) -> web.Response:
                return web.json_response(body())

            return handler

        app.router.add_get(
            "/watcher/status",
            answer(lambda: {"state": self._text("Running"), "isRunning": True, "watcherID": "ui"}),
        )
        app.router.add_get(
            "/watcher/varState",
            answer(lambda: {"variables": {"count": len(self.messages)}, "count": 1}),
        )
        app.router.add_get(
            "/watcher/signals", answer(lambda: {"varSigCount": 0, "recentSignals": []})
        )
        app.router.add_get("/watcher/memoCache", answer(lambda: {"entries": {}, "count": 0}))
        app.router.add_get("/watcher/config", answer(lambda: {"config": {"serverPort": 8080}}))
        app.router.add_get(
            "/watcher/logs", answer(lambda: {"effectLogs": [{"Message": self._text("tick")}]})
        )
        app.router.add_post("/watcher/message", self._message)
        app.router.add_get("/watcher/page", self._page)
        return app

    async def _message(self, request: web.Request) -> web.Response:
        content = str((await request.json()).get("content", ""))
        self.messages.append(content)
        reply = self._text(f"echo: {content}")
        return web.json_response({"status": "message sent", "handled": True, "reply": reply})

    async def _page(self, request: web.Request) -> web.Response:
        """An HTML page with a script: what a hostile program serves a browser that opens it."""
        body = (
            "<!doctype html><title>program page</title>"
            "<script>document.title = 'pwned'; window.__pwned = 3</script>"
        )
        return web.Response(text=body, content_type="text/html")

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        """Listen on the port; OSError(EADDRINUSE) if something else holds it."""
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        started: Future[None] = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            started.result(10)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()


def watcher_for(program: dict[str, Any], *, hostile: bool = False) -> ThreadedWatcher | None:
    """A watcher on the program's port, or None if another Host's program holds that port."""
    watcher = ThreadedWatcher(target_port(program), hostile=hostile)
    try:
        watcher.start()
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        return None
    return watcher


# --- the browser -----------------------------------------------------------------------------


class Browser:
    """One headless Chromium and the few things the tests do with it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless=new",
            "--no-sandbox",  # root in a VM: Chromium's own sandbox needs user namespaces
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,1000",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
        self.driver = webdriver.Chrome(options=options, service=service)
        #: Console entries read so far (reading the log empties it).
        self.console: list[dict[str, Any]] = []

    def quit(self) -> None:
        self.driver.quit()

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def wait(self, condition: Callable[[], Any], what: str, seconds: float = WAIT_SECONDS) -> Any:
        try:
            # An element the page re-rendered meanwhile is looked up again on the next poll.
            return WebDriverWait(
                self.driver,
                seconds,
                poll_frequency=0.1,
                ignored_exceptions=(StaleElementReferenceException,),
            ).until(lambda _: condition())
        except Exception as error:
            page = self.driver.find_element(By.TAG_NAME, "body").text[:3000]
            raise AssertionError(
                f"waited {seconds} s for {what}; the page shows:\n{page}"
            ) from error

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait_for(self, css: str, text: str = "") -> WebElement:
        def found() -> WebElement | None:
            for element in self.finds(css):
                if text in element.text:
                    return element
            return None

        element: WebElement = self.wait(found, f"{css} showing {text!r}")
        return element

    def click_button(self, text: str) -> None:
        self.wait_for("button", text).click()

    def click_link(self, text: str) -> None:
        self.wait_for("a", text).click()

    def fill(self, css: str, value: str) -> None:
        """Type into a field as a person would (clear() fires no input event for the page),
        once the page has rendered it (the app draws its pages after it loads)."""
        element: WebElement = self.wait(lambda: next(iter(self.finds(css)), None), f"a field {css}")
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(Keys.BACKSPACE)
        if value:
            element.send_keys(value)

    def choose(self, css: str, text: str) -> None:
        Select(self.find(css)).select_by_visible_text(text)

    def script(self, source: str) -> Any:
        return self.driver.execute_script(source)

    def sign_in(self, token: str) -> None:
        self.open("/ui/")
        self.fill("input[name=token]", token)
        self.click_button("Sign in")
        self.wait_for("#who")

    def alert_open(self) -> bool:
        try:
            self.driver.switch_to.alert  # noqa: B018 (the lookup is the check)
        except NoAlertPresentException:
            return False
        return True

    def read_console(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        self.console += entries
        return entries

    def console_errors(self, allowed: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """SEVERE console entries, less the ones a test provoked on purpose (`allowed` texts)."""
        self.read_console()
        return [
            entry
            for entry in self.console
            if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)
        ]


def _check_setup() -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(f"{path} is missing: {SETUP_HINT}")
    if not (DIST_DIR / "index.html").exists():
        pytest.fail(f"the dashboard is not built ({DIST_DIR}): {SETUP_HINT}")


@pytest.fixture
def browser_factory(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[RestHost], Browser]]:
    """New browsers on a Host; each must end with no console error but the allowed ones.

    A test lists the console messages it provokes on purpose (the 409 of a refused
    request, say) with `@pytest.mark.console_allows("409 (Conflict)")`.
    """
    _check_setup()
    marker = request.node.get_closest_marker("console_allows")
    allowed: tuple[str, ...] = tuple(marker.args) if marker is not None else ()
    opened: list[Browser] = []

    def factory(host: RestHost) -> Browser:
        browser = Browser(host.url)
        opened.append(browser)
        return browser

    try:
        yield factory
        for browser in opened:
            errors = browser.console_errors(allowed)
            assert errors == [], f"console errors in the dashboard: {errors}"
    finally:
        for browser in opened:
            browser.quit()
