"""JSON logs: one object per line with the request's id, route template, status and duration;
``X-Request-ID`` accepted when sane, else generated, and echoed on every answer; access lines
off on the order routes unless sampled; no secret in any line, of any process of ``serve``."""

from __future__ import annotations

import io
import logging
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.ops.logjson import REQUEST_ID, JsonFormatter
from gateway.ops.logsafe import SecretFilter
from tests.conftest import SECRET, Backends, auth, order_body, user_token
from tests.test_log_secrets import exchange, leaked, logger_with, request, statuses, stopped
from tests.test_maintenance_beside_serve import embedded_env, private_tmp
from tests.test_make_run import ROOT, free_port
from tests.test_supervisor import serve_env, start_serve

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
REQUIRED = ("time", "level", "logger", "message")
GENERATED = re.compile(r"[0-9a-f]{16}\Z")
KEY = "key-" + secrets.token_urlsafe(24)


def json_handler(secrets_: tuple[str, ...] = (KEY, SECRET)) -> tuple[logging.Handler, io.StringIO]:
    """A handler set up as ``logsafe.install`` and ``logjson.install`` set up the root's."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    secret_filter = SecretFilter(secrets_)
    handler.addFilter(secret_filter)
    handler.setFormatter(JsonFormatter(secret_filter.redact))
    return handler, out


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    handler, out = json_handler()
    with logger_with("tests.logjson", handler) as logger:
        yield logger, out


def lines(text: str) -> list[dict[str, Any]]:
    """Every line as its JSON object; fails on a line that is not one."""
    parsed = []
    for line in text.splitlines():
        value = orjson.loads(line)
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed


def test_an_exception_is_one_line_with_its_traceback_in_exc_and_no_secret(json_log):
    logger, out = json_log
    token = REQUEST_ID.set("req-1")
    try:
        try:
            raise ValueError(f"bad key {KEY}\nsecond line")
        except ValueError:
            logger.exception("failed with %s", KEY, extra={"detail": {"key": KEY}, "attempt": 3})
    finally:
        REQUEST_ID.reset(token)
    logger.info("outside a request")
    text = out.getvalue()
    assert leaked(text, KEY) == [], text
    first, second = lines(text)
    assert all(field in first for field in REQUIRED) and TIME.match(first["time"]), first
    assert (first["level"], first["logger"], first["message"]) == ("ERROR", "tests.logjson", "failed with [redacted]")
    assert first["request_id"] == "req-1" and first["attempt"] == 3 and first["detail"] == "{'key': '[redacted]'}"
    assert first["exc"].startswith("Traceback (most recent call last):\n")
    assert first["exc"].endswith("ValueError: bad key [redacted]\nsecond line")
    assert "request_id" not in second and "exc" not in second


def test_a_message_orjson_refuses_is_still_one_json_line(json_log):
    logger, out = json_log
    # straight to the handler: pytest's own log capture would carry the surrogate into a report xdist cannot send
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, "a lone surrogate \udcff from a path",
                               (), None, extra={"big": 2**70})
    logger.handlers[0].handle(record)
    (line,) = lines(out.getvalue())
    assert line["message"] == "a lone surrogate \\udcff from a path" and line["big"] == 2**70


@pytest.mark.parametrize("text", [
    f"plain {KEY} inside", f"{SECRET}", "Authorization: BeArEr abc.def", "token eyJhbGciOi.eyJzdWIi.sig here",
    "postgresql://oms:hunter2@db:5432/oms", "nothing to hide here at all", "bearer", "://", "",
], ids=lambda text: text.replace(KEY, "KEY"))  # the key is random: ids stay the same for every xdist worker
def test_the_quick_check_redacts_exactly_what_the_patterns_do(text):
    secret_filter = SecretFilter((KEY, SECRET))
    assert secret_filter.redact(text) == secret_filter.pattern.sub(secret_filter._replace, text)


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    """The ``gateway.access`` lines of this process, as JSON."""
    handler, out = json_handler()
    with logger_with("gateway.access", handler):
        yield out


async def test_request_id_is_echoed_on_answers_problems_and_no_route(gw, access_log):
    cases = [  # method, path, request id sent, status
        ("GET", "/healthz", "client.id:1-A_b", 200),
        ("GET", "/v1/orders/nobody-has-this", "x" * 128, 404),  # a handler's problem answer
        ("PUT", "/v1/inventory/LOG-1", "put-1", 422),
        ("GET", "/no/such/path", "route-less", 404),  # no_route
        ("DELETE", "/healthz", "wrong-method", 405),  # no_route's 405
    ]
    for method, path, rid, status in cases:
        resp = await gw.client.request(method, path, headers={"X-Request-ID": rid, **auth("k-ops")},
                                       json={"warehouses": "nope"} if method == "PUT" else None)
        assert (resp.status, resp.headers["X-Request-ID"]) == (status, rid), (method, path)
    logged = lines(access_log.getvalue())
    assert [(line["request_id"], line["method"], line["status"]) for line in logged] == \
        [(rid, method, status) for method, _, rid, status in cases]
    assert [line.get("route") for line in logged] == \
        ["/healthz", "/v1/orders/{order_id}", "/v1/inventory/{sku}", None, None]
    assert all(isinstance(line["duration"], float) and 0 < line["duration"] < 10 for line in logged)


@pytest.mark.parametrize("rid", ["", "x" * 129, "two words", "semi;colon", "tab\tafter", "é-accent"])
async def test_an_insane_request_id_is_replaced_by_a_fresh_one(gw, rid):
    resp = await gw.client.get("/healthz", headers={"X-Request-ID": rid})
    assert resp.status == 200 and GENERATED.match(resp.headers["X-Request-ID"]), resp.headers


async def test_two_requests_without_an_id_get_two_ids(gw):
    ids = {(await gw.client.get("/healthz")).headers["X-Request-ID"] for _ in range(2)}
    assert len(ids) == 2 and all(GENERATED.match(rid) for rid in ids)


ADMIN_KEY = auth("k-admin")


async def order_route_requests(gw) -> list[str]:
    """A created order, a refused one (409) and an invalid one (422), on the two order routes."""
    await gw.set_stock("LOG-1", {"W1": 1})
    ids = []
    for n, (path, body) in enumerate([
        ("/v1/orders", order_body("log-o1", items=[{"sku": "LOG-1", "qty": 1}])),
        ("/v1/orders", order_body("log-o2", items=[{"sku": "LOG-1", "qty": 1}])),
        ("/v1/orders", {"order_id": "bad"}),
        ("/v1/orders/batch", {"orders": [order_body("log-o3", items=[{"sku": "LOG-1", "qty": 1}])]}),
    ]):
        resp = await gw.post(path, body, headers={"X-Request-ID": f"order-{n}", **ADMIN_KEY})
        assert resp.headers["X-Request-ID"] == f"order-{n}"
        ids.append((resp.status, f"order-{n}"))
    assert [status for status, _ in ids] == [201, 409, 422, 200]
    return [rid for _, rid in ids]


async def test_order_routes_log_no_access_line_by_default(gw, access_log):
    await order_route_requests(gw)
    routes = [line["route"] for line in lines(access_log.getvalue())]
    assert routes == ["/v1/inventory/{sku}"]  # the set_stock before: other routes do log


async def test_order_routes_log_every_access_line_when_sampled_at_one(make_gateway, access_log):
    gw = await make_gateway(access_log_sample=1.0)
    ids = await order_route_requests(gw)
    logged = [line for line in lines(access_log.getvalue()) if line["route"] != "/v1/inventory/{sku}"]
    assert [(line["request_id"], line["route"], line["status"]) for line in logged] == [
        (ids[0], "/v1/orders", 201), (ids[1], "/v1/orders", 409), (ids[2], "/v1/orders", 422),
        (ids[3], "/v1/orders/batch", 200)]


API_KEYS = {"admin": "adm-" + secrets.token_urlsafe(24), "ops": "ops-" + secrets.token_urlsafe(24),
            "storefront:web": "web-" + secrets.token_urlsafe(24)}
JWT_SECRET = "jwt-" + secrets.token_urlsafe(36)
MARK = secrets.token_hex(6).encode()  # in every hostile id: it must appear in no line
HOSTILE_IDS = [MARK + b"\x00nul", MARK + b" spaces", MARK + b"l" * 200, MARK + b"\xc3\xa9", MARK + b"\x01",
               MARK + b"\tINFO forged line"]


async def send(http: aiohttp.ClientSession, method: str, url: str, rid: str | None = None,
               **kw: Any) -> tuple[int, str]:
    headers = kw.pop("headers", {}) | ({"X-Request-ID": rid} if rid else {})
    async with http.request(method, url, headers=headers, **kw) as resp:
        await resp.read()
        return resp.status, resp.headers["X-Request-ID"]


@pytest.mark.slow
async def test_serve_with_json_logs_writes_only_json_lines_with_ids_and_no_secret(backends: Backends, redis, pg,
                                                                                  tmp_path):
    port = free_port()
    env = serve_env(backends, port, tmp_path) | {
        "OMS_LOG_FORMAT": "json", "OMS_ENV": "test", "OMS_JWT_SECRET": JWT_SECRET,
        "OMS_API_KEYS": ",".join(f"{role}={key}" for role, key in API_KEYS.items()),
    }
    log = tmp_path / "serve.log"
    proc, base = await start_serve(env, log)
    ops, web = auth(API_KEYS["ops"]), auth(API_KEYS["storefront:web"])
    token = user_token("u-log", secret=JWT_SECRET)
    echoed: dict[str, tuple[str, int]] = {}  # id -> (route, status) of every access line expected
    order_ids: list[str] = []
    try:
        async with aiohttp.ClientSession(base) as http:
            status, rid = await send(http, "GET", "/healthz")
            assert status == 200 and GENERATED.match(rid)
            echoed[rid] = ("/healthz", 200)
            status, rid = await send(http, "PUT", "/v1/inventory/LOG-1", "client-put.1", headers=ops,
                                     json={"warehouses": {"W1": 5}})
            assert (status, rid) == (200, "client-put.1")
            echoed[rid] = ("/v1/inventory/{sku}", 200)
            status, rid = await send(http, "PUT", "/v1/inventory/LOG-1", "client-bad:2", headers=ops,
                                     json={"warehouses": {"W1": -1}})
            assert (status, rid) == (422, "client-bad:2")
            echoed[rid] = ("/v1/inventory/{sku}", 422)
            status, rid = await send(http, "GET", "/v1/nowhere/LOG-1", "client-404", headers=ops)
            assert (status, rid) == (404, "client-404")
            echoed[rid] = (None, 404)
            for n, order in enumerate([order_body("log-1", "u-log", items=[{"sku": "LOG-1", "qty": 1}]),
                                       order_body("log-2", "u-log", items=[{"sku": "LOG-1", "qty": 0}])]):
                status, rid = await send(http, "POST", "/v1/orders", f"client-order-{n}",
                                         headers={"Authorization": f"Bearer {token}"}, json=order)
                assert (status, rid) == ((201, 422)[n], f"client-order-{n}")
                order_ids.append(rid)
            status, rid = await send(http, "GET", "/v1/orders/log-1", "client-get", headers=web)
            assert (status, rid) == (200, "client-get")
            echoed[rid] = ("/v1/orders/{order_id}", 200)
        hostile_answers = []
        for hostile in HOSTILE_IDS:  # raw bytes: a client library would refuse to send most of them
            reply = await exchange(port, request("/healthz", b"X-Request-ID: " + hostile))
            hostile_answers.append(statuses(reply)[0])
            fresh = re.search(rb"(?i)x-request-id: ([0-9a-f]{16})\r\n", reply)
            if hostile_answers[-1] == 200:  # aiohttp let it through: the edge replaced it
                assert fresh, reply
                echoed[fresh[1].decode()] = ("/healthz", 200)
        assert 200 in hostile_answers and 400 in hostile_answers, hostile_answers  # both paths were tried
    finally:
        text = await stopped(proc, log)
    parsed = lines(text)  # every line of the supervisor, both HTTP workers and the writer
    assert all(all(field in line for field in REQUIRED) and TIME.match(line["time"]) for line in parsed)
    assert {line["logger"] for line in parsed} >= {"gateway", "gateway.ops.supervisor", "gateway.access"}
    access = {line["request_id"]: line for line in parsed  # start_serve polled /readyz
              if line["logger"] == "gateway.access" and line.get("route") != "/readyz"}
    assert {rid: (line.get("route"), line["status"]) for rid, line in access.items()} == echoed
    assert all(line["method"] in ("GET", "PUT") and isinstance(line["duration"], float) for line in access.values())
    assert not set(order_ids) & set(access)  # the order route logs no access line by default
    assert leaked(text, *API_KEYS.values(), JWT_SECRET, token) == [], text[-3000:]
    assert MARK.decode() not in text
    assert "Traceback" not in text


@pytest.fixture
def own_tmp() -> Iterator[Path]:
    yield from private_tmp()


@pytest.mark.slow
def test_a_maintenance_command_logs_json_lines_too(own_tmp: Path):
    """``migrate`` on embedded servers of its own: they start, migrations apply, they stop, all logged."""
    env = embedded_env(own_tmp / "data") | {"OMS_LOG_FORMAT": "json"}
    proc = subprocess.run([sys.executable, "-m", "gateway", "migrate"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("applied ")  # the command's answer, for a human, on stdout
    parsed = lines(proc.stderr)
    assert all(all(field in line for field in REQUIRED) and TIME.match(line["time"]) for line in parsed)
    assert {"gateway.ops.embedded", "gateway.db", "gateway"} <= {line["logger"] for line in parsed}, parsed
