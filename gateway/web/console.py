"""``/console``: the ops console's built files, and ``GET /v1/whoami``, which tells it who signed in.

The console is a Vue app built by Vite into ``console/dist`` (``make console``). Its pages
hold no data, so they need no credentials: every API call the page makes carries the
bearer the user pasted. ``index.html`` is answered with ``no-cache`` (revalidated, so a new
build shows at once) and for every client-side route under ``/console/``; the files under
``assets/`` have content hashes in their names and are cached for a year. A missing build
is not an error of the gateway: ``/console`` then answers 200 with how to build it.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from gateway.errors import NotFound
from gateway.web import appkeys as K
from gateway.web.common import json, principal

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "console" / "dist"  # in a source checkout
INDEX_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=31536000, immutable"
# One path segment, no leading dot: what Vite names its output. A name from a hostile path
# ("..%2f..%2fetc%2fpasswd" arrives decoded as "../../etc/passwd") never matches.
ASSET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
ASSET_TYPES = {  # suffix: content type; only these are served
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
    ".map": "application/json",
}
MISSING = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Console not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 3em auto">
  <h1>The console is not built</h1>
  <p>The gateway serves the ops console from <code>console/dist</code>, which is not there.
  Build it with Node 20 and npm:</p>
  <pre>make console</pre>
  <p>(<code>npm ci</code> and <code>npm run build</code> in <code>console/</code>), then reload this page.
  <code>make run</code> builds it by itself when <code>npm</code> is installed.
  The API works without it: see <a href="/docs">/docs</a>.</p>
</body>
</html>
"""


def build_dir(request: web.Request) -> Path:
    return request.app[K.SETTINGS].console_dir or DEFAULT_DIR


async def index(request: web.Request) -> web.StreamResponse:
    """The app's page, for ``/console`` and every client-side route; how to build it when it is not built."""
    page = build_dir(request) / "index.html"
    if not page.is_file():
        return web.Response(text=MISSING, content_type="text/html", headers={"Cache-Control": INDEX_CACHE})
    return web.FileResponse(page, headers={"Content-Type": "text/html; charset=utf-8",
                                           "Cache-Control": INDEX_CACHE})


async def page(request: web.Request) -> web.StreamResponse:
    """A client-side route (``/console/orders/…``): the app's page, which routes itself. Under
    ``assets/`` only files exist, so a miss there is a 404, not a page a script tag would choke on."""
    if request.match_info["console_page"].startswith("assets/"):
        raise NotFound("No such console asset")
    return await index(request)


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["console_asset"]
    content_type = ASSET_TYPES.get(Path(name).suffix) if ASSET_NAME.match(name) else None
    folder = build_dir(request) / "assets"
    path = folder / name
    # the name holds no separator and no leading dot, so ``path`` is inside ``folder``; the
    # check below also refuses a symlink in the build pointing out of it
    if content_type is None or not path.is_file() or path.resolve().parent != folder.resolve():
        raise NotFound("No such console asset")
    return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": ASSET_CACHE})


async def whoami(request: web.Request) -> web.Response:
    """The caller's role, and the channel of a storefront key or the user id of a user token; 401 without
    credentials or with a key or token the gateway does not know."""
    who = principal(request)
    body: dict[str, str] = {"role": who.role}
    if who.channel is not None:
        body["channel"] = who.channel
    if who.user_id is not None:
        body["user_id"] = who.user_id
    return json(body)
