"""The OpenAPI document and the docs page: every route of a real app is described, the
document is valid OpenAPI 3.1, its examples are valid, and /docs works offline."""

from __future__ import annotations

import html.parser
import re

import msgspec
import orjson
from openapi_spec_validator import validate

from gateway.web import openapi, urls
from gateway.web import schemas as S
from gateway.web.docs import ASSETS, asset_dir
from tests.conftest import auth


def operations(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


async def document(gw) -> dict:
    resp = await gw.client.get("/openapi.json")  # no credentials
    assert resp.status == 200 and resp.content_type == "application/json"
    return await resp.json()


async def test_every_registered_route_is_in_the_document_and_nothing_else(gw):
    doc = await document(gw)
    registered = {(r.method, r.resource.canonical) for r in gw.app.router.routes()
                  if r.method != "*"}  # the catch-all answering 404 and 405 for everything else
    assert len(registered) == len(urls.ROUTES)
    assert operations(doc) == registered


def test_the_document_is_valid_openapi_3_1():
    doc = orjson.loads(openapi.document())
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on any breach of the OpenAPI 3.1 meta-schema


def test_document_and_docs_need_no_credentials_and_every_other_route_names_its_roles():
    doc = orjson.loads(openapi.document())
    public = {("GET", p) for p in ("/openapi.json", "/docs", "/docs/static/{asset}", "/healthz", "/readyz",
                                   "/console", "/console/assets/{console_asset}", "/console/{console_page}")}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if (method.upper(), path) in public:
                assert op["security"] == [] and op["x-roles"] == [], path
            else:
                assert op["security"] and op["x-roles"], path
                assert "401" in op["responses"], path


def test_each_example_is_valid_for_its_type():
    for type_, example in S.EXAMPLES.items():
        msgspec.json.decode(orjson.dumps(example), type=type_)


def test_patterns_are_ecma_262_and_mean_what_msgspec_means():
    text = openapi.document().decode()
    assert r"\\Z" not in text  # \Z is no ECMA-262 escape
    order_in = orjson.loads(text)["components"]["schemas"]["OrderIn"]
    assert order_in["properties"]["order_id"]["pattern"] == "^[A-Za-z0-9._:-]+$"
    assert openapi.ecma({"pattern": r"^a\\Z"}) == {"pattern": r"^a\\Z"}  # an escaped backslash, then Z


def test_each_problem_status_lists_its_codes_and_undocumented_ones_do_not_match():
    doc = orjson.loads(openapi.document())
    conflict = doc["paths"]["/v1/orders"]["post"]["responses"]["409"]["content"]["application/problem+json"]
    assert "insufficient_stock" in conflict["schema"]["properties"]["code"]["enum"]
    assert "below_reserved" not in conflict["schema"]["properties"]["code"]["enum"]
    assert conflict["schema"]["properties"]["status"] == {"const": 409}


def test_the_document_is_built_once():
    assert openapi.document() is openapi.document()


class Refs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


async def test_docs_page_loads_local_assets_only_and_each_answers_with_its_type(gw):
    resp = await gw.client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    parser = Refs()
    parser.feed(page)
    assert len(parser.refs) == len(ASSETS) and "//" not in "".join(parser.refs), parser.refs
    assert 'url: "/openapi.json"' in page and "validatorUrl: null" in page
    for ref in parser.refs:
        asset = await gw.client.get(ref)
        assert asset.status == 200, ref
        assert asset.headers["Content-Type"] == ASSETS[ref.rsplit("/", 1)[1]]
        assert await asset.read() == (asset_dir() / ref.rsplit("/", 1)[1]).read_bytes()


async def test_docs_serve_a_swagger_ui_that_reads_openapi_3_1(gw):
    bundle = (asset_dir() / "swagger-ui-bundle.js").read_bytes()
    assert b'PACKAGE_VERSION:"5.' in bundle  # 4.x refuses `openapi: 3.1.0`
    resp = await gw.client.get("/docs/static/index.html")  # in the package, not an asset the page uses
    assert resp.status == 404 and resp.content_type == "application/problem+json"


async def test_a_method_the_document_does_not_name_is_405_allowing_what_it_names(gw):
    doc = await document(gw)
    templates = {path: re.compile("^" + re.sub(r"{\w+}", "[^/]+", path) + "$") for path in doc["paths"]}
    for path in doc["paths"]:
        concrete = re.sub(r"{\w+}", "x1", path)
        resp = await gw.client.patch(concrete, headers=auth("k-admin"))
        allowed = {m.upper() for p, item in doc["paths"].items() if templates[p].match(concrete) for m in item}
        assert resp.status == 405 and resp.content_type == "application/problem+json", concrete
        assert set(resp.headers["Allow"].split(",")) == allowed, concrete
