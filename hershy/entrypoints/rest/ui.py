"""The web dashboard at `/ui/`: a single-page app on the API's own origin.

`scripts/setup.sh` bundles `dashboard/` (TypeScript + Preact, esbuild) into
`dashboard/dist/`; this module serves that folder and nothing else: the SPA's
`index.html` for every page path (`/ui/`, `/ui/programs`, the original's,
`/ui/programs/{id}`, ...) and the bundle's files under `/ui/assets/`. Without
a bundle, `/ui/` answers a 503 page saying how to build it.

Security: the page sends the token only as `Authorization` (it lives in the
tab's `sessionStorage`), and every answer here carries a strict
Content-Security-Policy (scripts and styles from this origin only, no inline
code, no framing). Every other answer of the shim, above all what the proxy
passes on from a program's WatcherAPI, is sandboxed by its own CSP: a hostile
program that answers HTML cannot run script on the dashboard's origin, where
the tokens are.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

#: Where setup's bundle lands (git ignores it).
DIST_DIR = Path(__file__).resolve().parents[3] / "dashboard" / "dist"
ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
#: Where index.html says whether the Host asks for tokens (so the page needs no probe).
AUTH_PLACEHOLDER = "__HERSHY_AUTH__"

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # The bundle's file names do not change between builds: always revalidate.
    "Cache-Control": "no-cache",
}
#: Everything else the shim answers is data, never a page of this origin.
DATA_CSP = "sandbox; default-src 'none'; frame-ancestors 'none'"

NOT_BUILT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Hershy: dashboard not built</title></head>
<body><h1>The dashboard is not built</h1>
<p>This Host has no bundle in <code>dashboard/dist/</code>. Run <code>scripts/setup.sh</code>
(it installs the front-end packages and bundles the dashboard), then reload this page.</p>
<p>The REST API itself works: see <a href="/openapi.json">/openapi.json</a>.</p>
</body></html>
"""


def is_page_path(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


class Dashboard:
    def __init__(self, dist_dir: Path = DIST_DIR, *, auth_enabled: bool = True) -> None:
        self.dist_dir = dist_dir
        self.auth_enabled = auth_enabled

    def register(self, app: web.Application) -> None:
        app.router.add_route("GET", "/ui", self.redirect)
        app.router.add_route("GET", "/ui/{path:.*}", self.page)
        app.on_response_prepare.append(self._secure)

    @staticmethod
    async def _secure(request: web.Request, response: web.StreamResponse) -> None:
        """Page headers on /ui/, a sandbox on everything else (set as the headers go out)."""
        if is_page_path(request.path):
            response.headers.update(PAGE_HEADERS)
        else:
            response.headers["Content-Security-Policy"] = DATA_CSP
            response.headers["X-Content-Type-Options"] = "nosniff"

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect("/ui/")

    async def page(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if path.startswith("assets/"):
            return self._asset(path.removeprefix("assets/"))
        try:
            index = (self.dist_dir / "index.html").read_text(encoding="utf-8")
        except OSError:
            return web.Response(status=503, text=NOT_BUILT_PAGE, content_type="text/html")
        index = index.replace(AUTH_PLACEHOLDER, "on" if self.auth_enabled else "off")
        return web.Response(text=index, content_type="text/html")

    def _asset(self, name: str) -> web.StreamResponse:
        content_type = CONTENT_TYPES.get(Path(name).suffix)
        file = self.dist_dir / "assets" / name
        if content_type is None or not ASSET_NAME.fullmatch(name) or not file.is_file():
            raise web.HTTPNotFound(text=f"no such file in the dashboard: {name[:80]!r}")
        return web.FileResponse(file, headers={"Content-Type": content_type})
