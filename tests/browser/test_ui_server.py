"""How the shim serves the dashboard (hershy/entrypoints/rest/ui.py), over real HTTP.

No browser here: the headers that keep the page safe, the SPA's paths, the 503
page without a bundle, files outside the bundle refused, and the sandbox on
every answer that is not the dashboard's (above all the proxy's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hershy.entrypoints.rest.errors import error_middleware
from hershy.entrypoints.rest.ui import AUTH_PLACEHOLDER, DATA_CSP, PAGE_CSP, Dashboard


def bundle(root: Path) -> Path:
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(
        f'<meta name="hershy-auth" content="{AUTH_PLACEHOLDER}"><script src="/ui/assets/app.js">'
    )
    (root / "assets" / "app.js").write_text("console.log('dashboard')")
    (root / "assets" / "app.css").write_text("body{}")
    (root / "assets" / "notes.txt").write_text("not a type the dashboard serves")
    (root.parent / "secret.js").write_text("outside the bundle")
    return root


async def program_html(request: web.Request) -> web.Response:
    """What a hostile program could answer through the proxy."""
    return web.Response(text="<script>steal()</script>", content_type="text/html")


async def client_for(dashboard: Dashboard) -> TestClient[web.Request, web.Application]:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_route("*", "/programs/{program_id}/watcher{rest:.*}", program_html)
    dashboard.register(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = await client_for(Dashboard(bundle(tmp_path / "dist"), auth_enabled=True))
    yield client
    await client.close()


@pytest.mark.parametrize("path", ["/ui/", "/ui/programs", "/ui/programs/prog-1/watcher", "/ui/x"])
async def test_every_page_path_is_the_spa_with_strict_headers(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    async with client.get(path) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        body = await response.text()
        assert 'content="on"' in body
        assert AUTH_PLACEHOLDER not in body
        headers = response.headers
        assert headers["Content-Security-Policy"] == PAGE_CSP
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in PAGE_CSP
    assert "unsafe-inline" not in PAGE_CSP
    assert "unsafe-eval" not in PAGE_CSP


async def test_ui_redirects_to_ui_slash(client: TestClient[web.Request, web.Application]) -> None:
    async with client.get("/ui", allow_redirects=False) as response:
        assert response.status == 308
        assert response.headers["Location"] == "/ui/"


async def test_no_auth_is_said_in_the_page(tmp_path: Path) -> None:
    client = await client_for(Dashboard(bundle(tmp_path / "dist"), auth_enabled=False))
    try:
        async with client.get("/ui/") as response:
            assert 'content="off"' in await response.text()
    finally:
        await client.close()


async def test_assets_have_their_types_and_the_page_headers(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.get("/ui/assets/app.js") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/javascript")
        assert response.headers["Content-Security-Policy"] == PAGE_CSP
        assert await response.text() == "console.log('dashboard')"
    async with client.get("/ui/assets/app.css") as response:
        assert response.headers["Content-Type"].startswith("text/css")


@pytest.mark.parametrize(
    "path",
    [
        "/ui/assets/../../secret.js",
        "/ui/assets/%2e%2e/%2e%2e/secret.js",
        "/ui/assets/..%2f..%2fsecret.js",
        "/ui/assets/notes.txt",
        "/ui/assets/missing.js",
        "/ui/assets/sub/app.js",
        "/ui/assets/.hidden.js",
    ],
)
async def test_nothing_outside_the_bundle_is_served(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    async with client.get(path) as response:
        body = await response.read()
        assert b"outside the bundle" not in body
        assert b"not a type" not in body
        if response.status == 200:  # normalised by the client to a page path: the SPA
            assert response.content_type == "text/html"
        else:
            assert response.status == 404


async def test_without_a_bundle_the_page_says_how_to_build_it(tmp_path: Path) -> None:
    client = await client_for(Dashboard(tmp_path / "never-built", auth_enabled=True))
    try:
        async with client.get("/ui/programs") as response:
            assert response.status == 503
            assert response.content_type == "text/html"
            assert "scripts/setup.sh" in await response.text()
            assert response.headers["Content-Security-Policy"] == PAGE_CSP
        async with client.get("/ui/assets/app.js") as response:
            assert response.status == 404
    finally:
        await client.close()


async def test_a_programs_html_through_the_proxy_is_sandboxed(
    client: TestClient[web.Request, web.Application],
) -> None:
    for path in ("/programs/prog-1/watcher/status", "/programs/prog-1/watcher"):
        async with client.get(path) as response:
            assert await response.text() == "<script>steal()</script>"
            assert response.headers["Content-Security-Policy"] == DATA_CSP
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert DATA_CSP.startswith("sandbox;")  # no allow-scripts: an opaque origin, no script
    async with client.get("/no/such/route") as response:  # API answers too
        assert response.status == 404
        assert response.headers["Content-Security-Policy"] == DATA_CSP
