"""The console as the gateway serves it: its page, its hashed assets, client-side routes, a missing
build, hostile paths, and ``GET /v1/whoami`` for each kind of bearer."""

from __future__ import annotations

import pytest

from gateway.web.console import ASSET_CACHE
from tests.conftest import auth, user_token

PAGE = b'<!doctype html><html><head><script type="module" src="/console/assets/index-abc123.js"></script>' \
       b'</head><body><div id="app"></div></body></html>'


@pytest.fixture
def build(tmp_path):
    """A stand-in for console/dist: an index and two hashed assets, and a secret beside the build."""
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_bytes(PAGE)
    (dist / "assets" / "index-abc123.js").write_text("console.log('console')")
    (dist / "assets" / "index-def456.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("not for the web")
    (dist / "assets" / "link.js").symlink_to(tmp_path / "secret.txt")
    return dist


async def test_console_page_is_served_and_revalidated_every_time(make_gateway, build):
    gw = await make_gateway(console_dir=build)
    for path in ("/console", "/console/"):
        resp = await gw.client.get(path)
        assert resp.status == 200, path
        assert resp.content_type == "text/html"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert await resp.read() == PAGE


async def test_client_side_routes_answer_the_page(make_gateway, build):
    gw = await make_gateway(console_dir=build)
    for path in ("/console/orders", "/console/orders/web-1", "/console/stock/SKU-1", "/console/x/y/z?q=1"):
        resp = await gw.client.get(path)
        assert resp.status == 200, path
        assert resp.content_type == "text/html"
        assert await resp.read() == PAGE


async def test_hashed_assets_are_cached_for_a_year_with_their_type(make_gateway, build):
    gw = await make_gateway(console_dir=build)
    resp = await gw.client.get("/console/assets/index-abc123.js")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == ASSET_CACHE == "public, max-age=31536000, immutable"
    assert resp.content_type == "text/javascript"
    assert await resp.text() == "console.log('console')"
    css = await gw.client.get("/console/assets/index-def456.css")
    assert css.status == 200 and css.content_type == "text/css"


@pytest.mark.parametrize("path", [
    "/console/assets/missing-000.js",
    "/console/assets/..%2f..%2fetc%2fpasswd",
    "/console/assets/..%2findex.html",
    "/console/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/console/assets/.hidden.js",
    "/console/assets/link.js",  # a symlink out of the build
    "/console/assets/sub/dir.js",
    "/console/assets/index-abc123.js.txt",
], ids=["missing", "traversal", "up-one", "dot-encoded", "dotfile", "symlink-out", "subdir", "unknown-type"])
async def test_missing_or_hostile_asset_paths_are_404_problems(make_gateway, build, path):
    gw = await make_gateway(console_dir=build)
    resp = await gw.client.get(path)
    assert resp.status == 404, path
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "not_found"
    assert b"not for the web" not in await resp.read()


async def test_without_a_build_the_console_says_how_to_build(make_gateway, tmp_path):
    gw = await make_gateway(console_dir=tmp_path / "nothing-here")
    for path in ("/console", "/console/orders"):
        resp = await gw.client.get(path)
        assert resp.status == 200 and resp.content_type == "text/html", path
        text = await resp.text()
        assert "make console" in text and "npm" in text
    assert (await gw.client.get("/console/assets/index-abc123.js")).status == 404


@pytest.mark.parametrize(("bearer", "expected"), [
    ("k-admin", {"role": "admin"}),
    ("k-ops", {"role": "ops"}),
    ("k-pay", {"role": "payments"}),
    ("k-web", {"role": "storefront", "channel": "web"}),
    (user_token("u-42"), {"role": "user", "user_id": "u-42"}),
], ids=["admin", "ops", "payments", "storefront", "user"])
async def test_whoami_names_the_role_of_each_bearer(gw, bearer, expected):
    resp = await gw.client.get("/v1/whoami", headers=auth(bearer))
    assert resp.status == 200
    assert await resp.json() == expected


@pytest.mark.parametrize("headers", [
    {},
    auth("k-nobody"),
    auth(user_token("u-42", secret="not-the-gateway-secret-0123456789abcdef")),
    auth(user_token("u-42", ttl=-60)),
    {"Authorization": "Basic a2V5"},
], ids=["none", "unknown-key", "forged-token", "expired-token", "wrong-scheme"])
async def test_whoami_refuses_missing_or_forged_credentials(gw, headers):
    resp = await gw.client.get("/v1/whoami", headers=headers)
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_client_side_routes_with_any_characters_answer_the_page(make_gateway, build):
    gw = await make_gateway(console_dir=build)
    resp = await gw.client.get("/console/%29%1D%3E%0A%0FR%F3%84%98%BET")  # a newline and control characters
    assert resp.status == 200 and resp.content_type == "text/html"
