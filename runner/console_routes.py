"""The admin console at `/admin/`: static HTML, JS and CSS served from `runner/console/`.

The console holds no data and needs no key to load; its script sends the operator's key (kept in
the tab's sessionStorage) on each API call. Only the files shipped in `runner/console/` are served,
by name, each with a strict Content-Security-Policy, `X-Frame-Options: DENY` and no caching of
the page. What the console shows and does lives in its JS (`docs/console.md`).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Final

from aiohttp import web

from .access import public
from .http_errors import ApiError
from .openapi import documented

CONSOLE_DIR: Final = Path(__file__).resolve().parent / "console"
INDEX: Final = "index.html"
_NAME_PATTERN: Final = r"[a-z0-9][a-z0-9_-]{0,63}\.(?:html|js|css)"
_NAME_RE: Final = re.compile(_NAME_PATTERN)
_CONTENT_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
}
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",  # forms are handled in JS; a key never lands in a URL
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_NO_STORE: Final = "no-store"  # the page: always fetched fresh
_REVALIDATE: Final = "no-cache"  # scripts and styles: may be kept, but checked every time


@public
@documented(
    "The admin console (an HTML page; it calls this API with the key the operator types)",
    responses={200: None},
    tag="console",
)
async def console_index(request: web.Request) -> web.Response:
    """GET /admin/."""
    return await _serve(INDEX)


@public
@documented(
    "One of the admin console's static files (HTML, JS or CSS)",
    responses={200: None},
    errors=[404],
    tag="console",
)
async def console_file(request: web.Request) -> web.Response:
    """GET /admin/{name}."""
    return await _serve(request.match_info["name"])


@public
@documented("Redirect to the admin console at /admin/", responses={308: None}, tag="console")
async def console_redirect(request: web.Request) -> web.Response:
    """GET /admin."""
    raise web.HTTPPermanentRedirect("/admin/", headers=SECURITY_HEADERS)


def console_files(directory: Path = CONSOLE_DIR) -> frozenset[str]:
    """Return the names of the files the console serves (flat, by name pattern)."""
    if not directory.is_dir():
        return frozenset()
    return frozenset(
        p.name for p in directory.iterdir() if p.is_file() and _NAME_RE.fullmatch(p.name)
    )


def _read(name: str) -> bytes | None:
    # The name is checked against the pattern and the directory listing, never joined blindly.
    if _NAME_RE.fullmatch(name) is None or name not in console_files():
        return None
    try:
        return (CONSOLE_DIR / name).read_bytes()
    except OSError:
        return None


async def _serve(name: str) -> web.Response:
    body = await asyncio.to_thread(_read, name)
    if body is None:
        raise ApiError(404, "not_found", "no such console file")
    suffix = Path(name).suffix
    headers = {
        **SECURITY_HEADERS,
        "Cache-Control": _NO_STORE if suffix == ".html" else _REVALIDATE,
    }
    return web.Response(
        body=body, content_type=_CONTENT_TYPES[suffix], charset="utf-8", headers=headers
    )


def add_routes(app: web.Application) -> None:
    """Add the console's routes to `app`."""
    app.router.add_get("/admin", console_redirect)
    app.router.add_get("/admin/", console_index)
    app.router.add_get("/admin/{name:" + _NAME_PATTERN + "}", console_file)
