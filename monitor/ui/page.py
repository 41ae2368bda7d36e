"""``/ui/``: the daemon's status page, served on the API's listener from files in the package.

The page is static (``static/index.html``, ``app.js``, ``style.css``); everything it shows it reads from the API
with ``fetch`` — so with a token configured the page loads for anyone, asks for the token, keeps it in the tab's
``sessionStorage`` (gone when the tab closes, never in a URL) and sends it as ``Authorization: Bearer``; the data
stays behind the token. The state colours in ``style.css`` are appended from :data:`monitor.ui.svg.COLOURS`, so
the page's bars and the SVG timeline cannot disagree.

Every response carries a Content-Security-Policy that allows the page's own files and API only (no inline
script, no other origin, not framed), ``nosniff`` and ``no-referrer``.
"""

from __future__ import annotations

import re
from importlib import resources

import orjson
from aiohttp import hdrs, web

from monitor.ui.svg import COLOURS

__all__ = ["UI_PREFIX", "add_routes"]

UI_PREFIX = "/ui"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    hdrs.CACHE_CONTROL: "no-cache",
}


def _state_css() -> str:
    lines = []
    for state, colour in COLOURS.items():
        cls = re.sub(r"[^A-Za-z0-9_-]", "_", state)
        lines.append(f".s-{cls}{{background:{colour}}}")
    return "\n/* state colours: monitor.ui.svg.COLOURS */\n" + "\n".join(lines) + "\n"


def _assets() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for item in resources.files("monitor.ui").joinpath("static").iterdir():
        name = item.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if suffix not in _TYPES:
            continue
        body = item.read_bytes()
        if name == "style.css":
            body += _state_css().encode()
        files[name] = (body, _TYPES[suffix])
    return files


def add_routes(app: web.Application, *, token_required: bool) -> None:
    """Serve the page at ``/ui/`` (``/ui`` and ``/`` redirect there), its files at ``/ui/NAME``, and
    ``/ui/session.json`` — ``{"token_required": bool}``, so that the page asks for the token before it reads any
    data, instead of drawing a refused request (and a console error) first."""
    assets = _assets()
    session = orjson.dumps({"token_required": token_required})

    async def session_info(request: web.Request) -> web.Response:
        return web.Response(body=session, headers={**_HEADERS, hdrs.CONTENT_TYPE: "application/json"})

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        found = assets.get(name)
        if found is None:
            raise web.HTTPNotFound(reason=f"no such page: {name[:60]}")
        body, content_type = found
        return web.Response(body=body, headers={**_HEADERS, hdrs.CONTENT_TYPE: content_type})

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{UI_PREFIX}/")

    app.router.add_get("/", to_page)
    app.router.add_get(UI_PREFIX, to_page)
    app.router.add_get(f"{UI_PREFIX}/", asset)
    app.router.add_get(f"{UI_PREFIX}/session.json", session_info)
    app.router.add_get(UI_PREFIX + "/{name:[A-Za-z0-9_.-]+}", asset)
