"""``GET /openapi.json`` and ``GET /docs``: the document and Swagger UI, without credentials and without a CDN.

Swagger UI's files come from a Python package, so the page works offline. It is Swagger UI 5
as packaged by swagger-ui-py (its ``static`` folder, read as files, never imported), because
swagger-ui-bundle's newest release carries Swagger UI 4.15, which refuses an ``openapi: 3.1``
document ("Unable to render this definition").
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from aiohttp import web

from gateway.errors import NotFound

ASSET_PACKAGE, ASSET_FOLDER = "swagger_ui", "static"  # swagger-ui-py: Swagger UI 5, which reads OpenAPI 3.1
ASSETS = {  # name: content type; the page needs these and nothing else
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Flash-sale gateway API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="/docs/static/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script>
    // validatorUrl: null, or the page would ask validator.swagger.io about the document
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null,
                                 deepLinking: true, persistAuthorization: false});
  </script>
</body>
</html>
"""


@functools.cache
def asset_dir() -> Path:
    """The package's folder of Swagger UI files, found without importing the package."""
    spec = importlib.util.find_spec(ASSET_PACKAGE)
    assert spec is not None and spec.submodule_search_locations, f"{ASSET_PACKAGE} is a dependency"
    return Path(next(iter(spec.submodule_search_locations))) / ASSET_FOLDER


async def spec(request: web.Request) -> web.Response:
    from gateway.web import openapi  # it reads the URL table, which names this handler

    return web.Response(body=openapi.document(), content_type="application/json")


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["asset"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound(f"No asset {name!r}")
    return web.FileResponse(asset_dir() / name, headers={"Content-Type": content_type,
                                                         "Cache-Control": "public, max-age=86400"})
