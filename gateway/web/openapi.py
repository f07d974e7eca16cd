"""The OpenAPI 3.1 document, built from the URL table (gateway/web/urls.py) and the msgspec types.

Nothing here is written per route by hand: each row of ``urls.ROUTES`` gives its path, who
may call it, its body, query and answer types and its problem codes; ``COMMON`` adds the
codes every route of a kind answers (no or bad credentials, a body that does not parse, a
store that is down). Each status's problem schema lists its codes in a ``code`` enum, so a
code the table does not name fails response conformance (tests/test_fuzz.py). Built once
per process, on the first request: the table and the types do not change while it runs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from gateway import errors
from gateway.web import schemas as S

if TYPE_CHECKING:
    from gateway.web.urls import Route

REF = "#/components/schemas/{name}"
SERVICE_ROLES = ("admin", "ops", "payments", "storefront")
# Codes raised with ``code=`` on a general class, which errors.py cannot list: code -> status.
AD_HOC = {"malformed_json": 400, "client_closed": 400, "invalid_token": 401, "token_expired": 401,
          "sku_not_in_sale": 409, "channel_not_allowed": 409, "too_deep": 422, "duplicate_sku": 422,
          "unknown_parameter": 422, "spans_partitions": 422, "sale_spans_partitions": 422,
          "sale_moves_partition": 422}
COMMON = {  # kind of route -> codes every such route may answer
    "authenticated": ("unauthorized", "invalid_token", "token_expired", "backend_unavailable"),
    "body": ("malformed_json", "client_closed", "payload_too_large", "invalid", "too_deep"),
}
_PATH_PARAM = re.compile(r"{(\w+)(?::[^{}]*)?}")  # aiohttp's {name} or {name:regex}


def template(path: str) -> str:
    """The OpenAPI form of an aiohttp path: ``{name:regex}`` becomes ``{name}``."""
    return _PATH_PARAM.sub(r"{\1}", path)


STATUSES = {cls.code: cls.status for cls in vars(errors).values()
            if isinstance(cls, type) and issubclass(cls, errors.GatewayError)}


def status_of(code: str) -> int:
    """The HTTP status a problem ``code`` goes with; a code nobody defined is a KeyError."""
    if code in AD_HOC:
        return AD_HOC[code]
    if code.startswith("invalid_"):  # a field's own: invalid_sku, invalid_cursor, ...
        return errors.Invalid.status
    return STATUSES[code]


def ecma(schema: Any) -> Any:
    """``schema`` with its patterns in ECMA-262 form, the dialect OpenAPI 3.1 names.

    msgspec's patterns end in ``\\Z`` (Python: only at the very end; ``$`` also matches
    before a trailing newline). ECMA-262 has no ``\\Z``, and its ``$`` without the m flag
    matches only at the end, so ``\\Z`` becomes ``$`` with the same meaning.
    """
    if isinstance(schema, dict):
        out = {k: ecma(v) for k, v in schema.items()}
        pattern = out.get("pattern")
        if isinstance(pattern, str) and pattern.endswith(r"\Z") and not pattern.endswith(r"\\Z"):
            out["pattern"] = pattern[:-2] + "$"
        return out
    if isinstance(schema, list):
        return [ecma(v) for v in schema]
    return schema


def problem_schema(status: int, codes: Iterable[str]) -> dict[str, Any]:
    return {"allOf": [{"$ref": REF.format(name="Problem")}],
            "properties": {"status": {"const": status}, "code": {"enum": sorted(set(codes))}}}


def codes_of(route: Route) -> list[str]:
    codes = list(route.codes)
    if route.roles:
        codes += COMMON["authenticated"]
    if route.body is not None:
        codes += COMMON["body"]
    return codes


def security_of(route: Route) -> list[dict[str, list[str]]]:
    """Who may call: a service key (``serviceKey``) or a user token (``userToken``); [] is anyone."""
    schemes = []
    if any(r in SERVICE_ROLES for r in route.roles):
        schemes.append({"serviceKey": []})
    if "user" in route.roles:
        schemes.append({"userToken": []})
    return schemes


def content(schema: Any, media: Sequence[str], example: Any = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"schema": schema}
    if example is not None:
        entry["example"] = example
    return {m: entry for m in media}


def operation(route: Route, refs: dict[Any, Any], query: dict[type, dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{route.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', template(route.path).lower()).strip('_')}",
        "summary": route.summary, "tags": [route.tag], "security": security_of(route),
        "x-roles": list(route.roles),
    }
    if route.description:
        op["description"] = route.description
    params = [{"name": name, "in": "path", "required": True, "schema": refs[S.PATH_TYPES[name]]}
              for name in _PATH_PARAM.findall(route.path)]
    if route.query is not None:
        schema = query[route.query]
        params += [{"name": name, "in": "query", "required": name in schema.get("required", ()), "schema": prop}
                   for name, prop in schema["properties"].items()]
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": route.body_required,
                             "content": content(refs[route.body], ["application/json"], S.EXAMPLES.get(route.body))}
    responses: dict[str, Any] = {}
    for status, type_ in route.ok.items():
        answer: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if status != 204:
            schema = refs[type_] if type_ is not None else {"type": "string"}
            answer["content"] = content(schema, route.media, S.EXAMPLES.get(type_))
        responses[str(status)] = answer
    by_status: dict[int, list[str]] = {}
    for code in codes_of(route):
        by_status.setdefault(status_of(code), []).append(code)
    for status, codes in sorted(by_status.items()):
        answer = {"description": HTTPStatus(status).phrase,
                  "content": content(problem_schema(status, codes), ["application/problem+json"])}
        if status == 401:
            answer["headers"] = {"WWW-Authenticate": {"schema": {"const": "Bearer"}, "required": True}}
        elif status in (429, 503):
            answer["headers"] = {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"},
                                                 "required": True}}
        responses[str(status)] = answer
    op["responses"] = responses
    return op


def build(routes: Sequence[Route], version: str) -> dict[str, Any]:
    """The document for ``routes``: schemas under ``#/components/schemas``, one operation per route."""
    types: list[Any] = [S.Problem, *S.PATH_TYPES.values(), *S.STREAMED]
    for route in routes:
        types += [t for t in (route.body, route.query, *route.ok.values()) if t is not None]
    types = list(dict.fromkeys(types))
    found, components = msgspec.json.schema_components(types, ref_template=REF)
    refs = dict(zip(types, found, strict=True))
    query = {t: components.pop(t.__name__) for t in dict.fromkeys(r.query for r in routes) if t is not None}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(template(route.path), {})[route.method.lower()] = operation(route, refs, query)
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Flash-sale order gateway", "version": version,
                 "description": "Orders, their lifecycle, stock, sales, events and operations. Errors are "
                                "RFC 9457 `application/problem+json` with a stable `code`. Each operation "
                                "names the roles that may call it in `x-roles`; operations without "
                                "`security` (health, readiness, this document and `/docs`) need no "
                                "credentials. Generated from gateway/web/urls.py and the msgspec types."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "serviceKey": {"type": "http", "scheme": "bearer",
                               "description": "A service key from OMS_API_KEYS, with a role: admin, ops, payments "
                                              "or storefront (bound to a channel)."},
                "userToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "An end user's HS256 token: `sub` is the user id, `exp` required."},
            },
        },
    }
    return ecma(doc)


@functools.cache
def document() -> bytes:
    """The document as served, built on first use."""
    from importlib.metadata import version

    from gateway.web.urls import ROUTES  # the table names the handler that serves this

    return orjson.dumps(build(ROUTES, version("flashsale-gateway")))
