"""The API fuzzed against its own OpenAPI document with schemathesis, on a real gateway.

Every operation of /openapi.json gets valid and invalid requests (schemathesis's positive
and negative modes), sent with each role's credentials (admin, ops, payments, a storefront
key, a user token), some aimed at objects that exist (an order in each status the seed
reaches, a SKU with stock, a sale, a warehouse, a webhook). Each answer must be no 5xx, a
documented status with a body matching its schema and media type (problem+json for
errors, each status's codes an enum), its documented headers, a 4xx for data the document
rules out, and a 401 once the credentials are taken away. The schemathesis calls are
blocking, so they run in a thread while the gateway serves on the test's event loop.

``FUZZ_EXAMPLES`` sets the examples per operation (``make fuzz`` raises it); the default
keeps ``make test`` at about a thousand cases. Operations answering ``text/event-stream``
(``GET /v1/stats/stream``) are left out: a valid case opens a stream that never ends, so no
call would return; tests/test_live.py sends them valid, hostile and unauthorised requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import urllib.parse
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.web.console import DEFAULT_DIR
from tests.conftest import auth, order_body, user_token

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "45"))  # per operation: over 1,000 cases in all
LONG = "FUZZ_EXAMPLES" in os.environ
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, ignored_auth]
SKU = "FZ-1"
REQUEST_LINE = 8000  # aiohttp reads at most 8190 bytes of a request line
# Objects the seed makes, by path parameter: lookups and transitions hit these as well as random ids.
EXISTING = {"order_id": ["fz-pending", "fz-paid", "fz-shipped", "fz-cancelled", "fz-user-2"], "sku": [SKU],
            "sale_id": ["fz-sale"], "warehouse_id": ["W1"], "webhook_id": ["fz-hook"],
            "asset": ["swagger-ui.css", "favicon-16x16.png"],
            # the console's build when there is one (its names carry content hashes), and client-side routes
            "console_asset": sorted(p.name for p in (DEFAULT_DIR / "assets").glob("*"))[:2] or ["index.js"],
            "console_page": ["orders", "orders/web-1", "assets/index.js"]}


@dataclasses.dataclass
class Run:
    cases: int = 0
    failures: dict[str, str] = dataclasses.field(default_factory=dict)


async def seed(gw) -> None:
    c, ops, pay = gw.client, auth("k-ops"), auth("k-pay")
    assert (await c.put("/v1/warehouses/W1", json={"region": "east", "priority": 1}, headers=ops)).status == 201
    await gw.set_stock(SKU, {"W1": 10_000})
    sale = {"skus": [SKU], "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2199-01-01T00:00:00Z",
            "per_user_limit": 1000}
    assert (await c.put("/v1/sales/fz-sale", json=sale, headers=ops)).status == 201
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["order.paid"], "secret": "s" * 16}
    assert (await c.put("/v1/webhooks/fz-hook", json=hook, headers=auth("k-admin"))).status == 201
    for order_id in EXISTING["order_id"]:
        user = "u-2" if order_id == "fz-user-2" else "u-1"
        body = order_body(order_id, user, [{"sku": SKU, "qty": 1}])
        assert (await gw.post("/v1/orders", body)).status == 201
    for order_id, steps in {"fz-paid": ["payment"], "fz-shipped": ["payment", "ship"], "fz-cancelled": ["cancel"]}.items():
        for step in steps:
            body = {"payment": {"payment_id": f"pay-{order_id}", "amount": 0}, "cancel": {"reason": "ops"}}.get(step, {})
            resp = await c.post(f"/v1/orders/{order_id}/{step}", json=body, headers=pay)
            assert resp.status == 200, await resp.text()
    await gw.caught_up()  # lists and the event feed read PostgreSQL


def without_streams(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without its event-stream operations."""
    paths = {}
    for path, item in doc["paths"].items():
        kept = {method: op for method, op in item.items()
                if "text/event-stream" not in op["responses"].get("200", {}).get("content", {})}
        if kept:
            paths[path] = kept
    return {**doc, "paths": paths}


def strategy(operation: Any) -> st.SearchStrategy:
    """Valid and invalid cases, the document's examples, and valid cases aimed at each existing object of a path
    parameter."""
    options = [operation.as_strategy(generation_mode=mode) for mode in GenerationMode]
    options += operation.get_strategies_from_examples()  # the document's own examples
    names = [p.name for p in operation.path_parameters]
    for name in names:
        for value in EXISTING[name]:
            options.append(operation.as_strategy(path_parameters={name: value}))
    return st.one_of(options)


def fuzz(doc: dict[str, Any], base_url: str) -> Run:
    schema = schemathesis.openapi.from_dict(doc)
    credentials = {"admin": "k-admin", "ops": "k-ops", "payments": "k-pay", "storefront": "k-web",
                   "user": user_token("u-1")}
    roles = st.sampled_from(sorted(credentials))
    run = Run()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not LONG,
                  phases=[Phase.explicit, Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
        @given(case=strategy(operation), role=roles)
        def check(case: Any, role: str) -> None:
            if any(v is None or isinstance(v, list) and len(v) <= 1 for v in (case.query or {}).values()):
                # ["5"] goes out as ?limit=5, the same bytes as 5, and None or [] as nothing at all: "negative"
                # cases whose request is valid, which the server rightly takes
                return
            if len(urllib.parse.urlencode(case.query or {}, doseq=True)) > REQUEST_LINE:
                return  # aiohttp's parser answers a longer request line itself, a plain 400, before any route
            run.cases += 1
            case.call_and_validate(base_url=base_url, session=session, checks=CHECKS,
                                   headers={"Authorization": f"Bearer {credentials[role]}"}, timeout=30)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup is a BaseExceptionGroup
            # each operation's first failure, shrunk; the other operations still run
            run.failures[operation.label] = f"{type(exc).__name__}: {exc}"
    session.close()
    return run


@pytest.mark.slow
@pytest.mark.timeout(max(170, EXAMPLES * 6))
async def test_every_answer_of_every_operation_conforms_to_the_document(gw):
    await seed(gw)
    doc = await (await gw.client.get("/openapi.json")).json()
    base_url = str(gw.client.make_url("")).rstrip("/")
    streams = without_streams(doc)
    assert set(doc["paths"]) - set(streams["paths"]) == {"/v1/stats/stream"}
    run = await asyncio.to_thread(fuzz, streams, base_url)
    assert not run.failures, "\n\n".join(f"== {label}\n{text}" for label, text in run.failures.items())
    assert run.cases >= 1000 or EXAMPLES < 45, run.cases
