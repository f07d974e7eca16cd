"""Webhooks: admin-only CRUD, and deliveries that are signed, in id order, retried until a 2xx,
booked attempt by attempt, one process per webhook, and never in the way of order intake."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.web import appkeys as K
from gateway.webhooks import LOCK_CLASS, Sender, sign, verify_signature
from tests.conftest import as_user, auth, order_body

SECRET = "whsec-0123456789abcdef"


@dataclasses.dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event_id(self) -> int:
        return int(orjson.loads(self.body)["id"])


class Receiver:
    """A webhook consumer on 127.0.0.1: answers 500 to its first ``failures`` requests, and
    holds its first ``hold`` requests until ``release`` is set.

    Its socket is bound from the start but listens only after ``start``: before that, a
    connection is refused.
    """

    def __init__(self, failures: int = 0, hold: int = 0) -> None:
        self.failures, self.hold = failures, hold
        self.requests: list[Request] = []  # every request, as it arrived
        self.answered: list[tuple[Request, int]] = []  # and the status each got
        self.release = asyncio.Event()
        self._changed = asyncio.Condition()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._server = TestServer(app, socket_factory=lambda *_: self._sock)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/{name}"

    async def start(self) -> None:
        await self._server.start_server()

    async def close(self) -> None:
        self.release.set()
        await self._server.close()
        self._sock.close()

    def delivered(self, name: str) -> list[int]:
        """Event ids answered 2xx on ``/name``, in order."""
        return [r.event_id for r, status in self.answered if r.path == f"/{name}" and status < 300]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)
        await asyncio.wait_for(wait(), timeout)

    async def _handle(self, request: web.Request) -> web.Response:
        req = Request(request.path, dict(request.headers), await request.read())
        async with self._changed:
            self.requests.append(req)
            n = len(self.requests)
            self._changed.notify_all()
        if n <= self.hold:
            await self.release.wait()
        status = 500 if n <= self.failures else 200
        async with self._changed:
            self.answered.append((req, status))
            self._changed.notify_all()
        return web.Response(status=status)


@pytest.fixture
async def make_receiver() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    made: list[Receiver] = []

    async def make(*, start: bool = True, **options: Any) -> Receiver:
        receiver = Receiver(**options)
        made.append(receiver)
        if start:
            await receiver.start()
        return receiver

    yield make
    for receiver in made:
        await receiver.close()


@pytest.fixture
async def quiet_gw(make_gateway):
    """A gateway whose own sender is stopped: the test's senders, with quick back-off, are the only ones."""
    gw = await make_gateway()
    await gw.app[K.WEBHOOKS].close()
    return gw


@pytest.fixture
async def make_sender(quiet_gw, backends) -> AsyncIterator[Callable[..., Sender]]:
    made: list[Sender] = []

    def make(**options: Any) -> Sender:
        sender = Sender(quiet_gw.app[K.PG], backends.database_url,
                        **{"base": 0.02, "cap": 0.2, "poll": 0.02, **options})
        sender.start()
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close()


async def put_hook(gw, hook_id: str, url: str, events: list[str] | None = None, secret: str = SECRET,
                   key: str = "k-admin"):
    return await gw.client.put(f"/v1/webhooks/{hook_id}", headers=auth(key),
                               json={"url": url, "events": events or ["*"], "secret": secret})


async def place(gw, n: int, prefix: str = "wh") -> list[int]:
    """``n`` accepted orders, written to PostgreSQL; the ids of all events in the feed so far."""
    await gw.set_stock("SKU-1", {"W1": 1000})
    resps = await asyncio.gather(*(gw.post("/v1/orders", order_body(f"{prefix}-{i}"), auth("k-web"))
                                   for i in range(n)))
    assert [r.status for r in resps] == [201] * n
    await gw.caught_up()
    return [e["id"] for e in await feed(gw)]


async def feed(gw) -> list[dict[str, Any]]:
    resp = await gw.client.get("/v1/events?limit=1000", headers=auth("k-ops"))
    return (await resp.json())["events"]


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy: for database state that nothing announces."""
    async def poll() -> Any:
        while not (result := await check()):
            await asyncio.sleep(0.02)
        return result
    return await asyncio.wait_for(poll(), timeout)


async def booked(pg, hook_id: str, until: Callable[[list[tuple[Any, ...]]], bool]) -> list[tuple[Any, ...]]:
    """The webhook's attempts as (event id, attempt, status, error), once ``until`` holds for them."""
    async def rows() -> list[tuple[Any, ...]] | None:
        found = [tuple(r) for r in await pg.fetch(
            "SELECT event_id, attempt, status, error FROM webhook_attempts WHERE webhook_id = $1 ORDER BY id",
            hook_id)]
        return found if until(found) else None
    return await eventually(rows)


# --- managing webhooks ---------------------------------------------------------------------


async def test_put_creates_then_replaces_and_no_answer_carries_the_secret(gw):
    created = await put_hook(gw, "h1", "https://example.com/hook", ["order.paid", "order.accepted"])
    assert created.status == 201
    body = await created.json()
    assert body["id"] == "h1"
    assert body["url"] == "https://example.com/hook"
    assert body["events"] == ["order.accepted", "order.paid"]
    assert "secret" not in body

    replaced = await put_hook(gw, "h1", "http://example.com/v2", ["order.paid", "*"], secret="x" * 256)
    assert replaced.status == 200
    body = await replaced.json()
    assert (body["url"], body["events"], "secret" in body) == ("http://example.com/v2", ["*"], False)
    assert body["created_at"] <= body["updated_at"]

    listed = await gw.client.get("/v1/webhooks", headers=auth("k-admin"))
    assert listed.status == 200
    assert await listed.json() == {"webhooks": [body]}
    assert SECRET not in await listed.text()


async def test_delete_answers_204_then_404_and_the_webhook_is_gone(gw):
    assert (await put_hook(gw, "h1", "http://example.com/a")).status == 201
    assert (await put_hook(gw, "h2", "http://example.com/b")).status == 201
    gone = await gw.client.delete("/v1/webhooks/h1", headers=auth("k-admin"))
    assert gone.status == 204
    again = await gw.client.delete("/v1/webhooks/h1", headers=auth("k-admin"))
    assert again.status == 404
    assert (await again.json())["code"] == "not_found"
    listed = await (await gw.client.get("/v1/webhooks", headers=auth("k-admin"))).json()
    assert [h["id"] for h in listed["webhooks"]] == ["h2"]


@pytest.mark.parametrize("headers, status", [
    pytest.param({}, 401, id="no_credentials"),
    pytest.param(auth("k-ops"), 403, id="ops"),
    pytest.param(auth("k-pay"), 403, id="payments"),
    pytest.param(auth("k-web"), 403, id="storefront"),
    pytest.param(as_user("u-1"), 403, id="user"),
])
async def test_only_admin_manages_webhooks(gw, headers, status):
    assert (await put_hook(gw, "keep", "http://example.com/a")).status == 201
    body = {"url": "http://example.com/b", "events": ["*"], "secret": SECRET}
    assert (await gw.client.put("/v1/webhooks/h1", json=body, headers=headers)).status == status
    assert (await gw.client.get("/v1/webhooks", headers=headers)).status == status
    assert (await gw.client.delete("/v1/webhooks/keep", headers=headers)).status == status
    listed = await (await gw.client.get("/v1/webhooks", headers=auth("k-admin"))).json()
    assert [(h["id"], h["url"]) for h in listed["webhooks"]] == [("keep", "http://example.com/a")]


@pytest.mark.parametrize("change, code", [
    pytest.param({"url": "ftp://example.com/x"}, "invalid_url", id="ftp_url"),
    pytest.param({"url": "http://"}, "invalid_url", id="url_without_host"),
    pytest.param({"url": "example.com/hook"}, "invalid_url", id="relative_url"),
    pytest.param({"url": "http://exa mple.com/"}, "invalid_url", id="url_with_space"),
    pytest.param({"events": []}, "invalid", id="no_events"),
    pytest.param({"events": ["order.exploded"]}, "invalid", id="unknown_event_type"),
    pytest.param({"events": "*"}, "invalid", id="events_not_a_list"),
    pytest.param({"secret": "x" * 15}, "invalid", id="secret_too_short"),
    pytest.param({"secret": "x" * 257}, "invalid", id="secret_too_long"),
    pytest.param({"secret": None}, "invalid", id="secret_missing"),
    pytest.param({"active": True}, "invalid", id="unknown_field"),
])
async def test_invalid_webhook_is_refused_with_422(gw, change, code):
    body = {"url": "http://example.com/hook", "events": ["*"], "secret": SECRET, **change}
    body = {k: v for k, v in body.items() if v is not None}
    resp = await gw.client.put("/v1/webhooks/h1", json=body, headers=auth("k-admin"))
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["code"] == code
    assert (await (await gw.client.get("/v1/webhooks", headers=auth("k-admin"))).json()) == {"webhooks": []}


async def test_malformed_webhook_id_is_422(gw):
    resp = await put_hook(gw, "bad%20id", "http://example.com/hook")
    assert resp.status == 422
    assert (await resp.json())["code"] == "invalid_webhook_id"


def test_signature_verifies_only_the_same_body_secret_and_a_recent_time():
    body = b'{"id":1}'
    now = str(int(time.time()))
    header = sign(SECRET, now, body)
    assert header.startswith("sha256=")
    assert verify_signature(SECRET, now, body, header)
    assert not verify_signature(SECRET, now, b'{"id":2}', header)
    assert not verify_signature("another-secret-0123", now, body, header)
    assert not verify_signature(SECRET, str(int(now) + 1), body, header)
    assert not verify_signature(SECRET, now, body, header.removeprefix("sha256="))
    assert not verify_signature(SECRET, None, body, header)
    assert not verify_signature(SECRET, now, body, None)
    assert not verify_signature(SECRET, "soon", body, header)
    old = str(int(time.time()) - 3600)
    assert not verify_signature(SECRET, old, body, sign(SECRET, old, body))
    assert verify_signature(SECRET, old, body, sign(SECRET, old, body), tolerance=None)


# --- delivering ------------------------------------------------------------------------------


async def test_receiver_gets_every_accepted_event_once_in_id_order_signed(gw, make_receiver):
    receiver = await make_receiver()
    assert (await put_hook(gw, "h1", receiver.url("h1"))).status == 201
    ids = await place(gw, 30)
    await receiver.wait_until(lambda: len(receiver.delivered("h1")) >= len(ids))
    assert receiver.delivered("h1") == ids

    by_id = {e["id"]: e for e in await feed(gw)}
    for req in receiver.requests:
        event = orjson.loads(req.body)
        assert event == by_id[event["id"]]
        assert event["type"] == "order.accepted"
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["X-OMS-Event-Id"] == str(event["id"])
        assert verify_signature(SECRET, req.headers["X-OMS-Timestamp"], req.body,
                                req.headers["X-OMS-Signature"])

    async def cursor() -> bool:
        hooks = await (await gw.client.get("/v1/webhooks", headers=auth("k-admin"))).json()
        return hooks["webhooks"][0]["last_event_id"] == ids[-1]
    await eventually(cursor)


async def test_new_webhook_starts_after_the_events_already_there(gw, make_receiver):
    before = await place(gw, 2, prefix="old")
    receiver = await make_receiver()
    assert (await put_hook(gw, "h1", receiver.url("h1"))).status == 201
    after = await place(gw, 1, prefix="new")
    new = [i for i in after if i not in before]
    await receiver.wait_until(lambda: receiver.delivered("h1"))
    assert receiver.delivered("h1") == new


async def test_webhook_gets_only_the_types_it_asked_for_and_its_cursor_passes_the_rest(gw, make_receiver):
    receiver = await make_receiver()
    await put_hook(gw, "all", receiver.url("all"))
    await put_hook(gw, "paid", receiver.url("paid"), ["order.paid"])
    ids = await place(gw, 3)
    await receiver.wait_until(lambda: receiver.delivered("all") == ids)

    async def passed() -> bool:
        hooks = await (await gw.client.get("/v1/webhooks", headers=auth("k-admin"))).json()
        return {h["id"]: h["last_event_id"] for h in hooks["webhooks"]}["paid"] == ids[-1]
    await eventually(passed)
    assert [r.path for r in receiver.requests] == ["/all"] * 3


async def test_receiver_answering_500_for_a_while_gets_every_event_and_each_attempt_is_booked(
        quiet_gw, make_sender, make_receiver, pg, caplog):
    caplog.set_level(logging.DEBUG)
    receiver = await make_receiver(failures=3)
    await put_hook(quiet_gw, "h1", receiver.url("h1"))
    ids = await place(quiet_gw, 4)
    make_sender()
    await receiver.wait_until(lambda: receiver.delivered("h1") == ids)

    assert [r.event_id for r in receiver.requests] == [ids[0]] * 4 + ids[1:]
    assert [s for _, s in receiver.answered] == [500, 500, 500, 200, 200, 200, 200]
    assert await booked(pg, "h1", lambda rows: len(rows) == 7) == [
        (ids[0], 1, 500, None), (ids[0], 2, 500, None), (ids[0], 3, 500, None), (ids[0], 4, 200, None),
        *((i, 1, 200, None) for i in ids[1:]),
    ]
    assert SECRET not in caplog.text


async def test_receiver_not_listening_at_first_gets_every_event_once_it_listens(
        quiet_gw, make_sender, make_receiver, pg):
    receiver = await make_receiver(start=False)
    await put_hook(quiet_gw, "h1", receiver.url("h1"))
    ids = await place(quiet_gw, 3)
    make_sender()
    refused = await booked(pg, "h1", lambda rows: len(rows) >= 2)
    assert all(event == ids[0] and status is None and error for event, _, status, error in refused)

    await receiver.start()
    await receiver.wait_until(lambda: receiver.delivered("h1") == ids)
    rows = await booked(pg, "h1", lambda rows: any(r[0] == ids[-1] for r in rows))
    first = [r for r in rows if r[0] == ids[0]]
    assert len(first) > len(refused)
    assert [r[1] for r in first] == list(range(1, len(first) + 1))
    assert all(r[2] is None and r[3] for r in first[:-1])
    assert first[-1][2:] == (200, None)
    assert [r for r in rows if r[0] != ids[0]] == [(i, 1, 200, None) for i in ids[1:]]


async def test_request_that_times_out_is_booked_as_an_error_and_sent_again(
        quiet_gw, make_sender, make_receiver, pg):
    receiver = await make_receiver(hold=1)
    await put_hook(quiet_gw, "h1", receiver.url("h1"))
    ids = await place(quiet_gw, 2)
    make_sender(timeout=0.3)
    await receiver.wait_until(lambda: receiver.delivered("h1") == ids)
    assert [r.event_id for r in receiver.requests] == [ids[0], ids[0], ids[1]]
    assert await booked(pg, "h1", lambda rows: len(rows) == 3) == [
        (ids[0], 1, None, "timeout after 0.3 s"), (ids[0], 2, 200, None), (ids[1], 1, 200, None)]
    waited = await pg.fetchval("SELECT duration_ms FROM webhook_attempts WHERE webhook_id = 'h1' AND attempt = 1 "
                               "AND event_id = $1", ids[0])
    assert waited >= 300


async def test_hanging_receiver_does_not_hold_up_orders(quiet_gw, make_sender, make_receiver, pg):
    receiver = await make_receiver(hold=1)
    await put_hook(quiet_gw, "h1", receiver.url("h1"))
    await quiet_gw.set_stock("SKU-1", {"W1": 100})
    make_sender(timeout=120)
    assert (await quiet_gw.post("/v1/orders", order_body("hang-0"), auth("k-web"))).status == 201
    await receiver.wait_until(lambda: receiver.requests)  # the sender now waits on the receiver

    resps = await asyncio.gather(*(quiet_gw.post("/v1/orders", order_body(f"hang-{i}"), auth("k-web"))
                                   for i in range(1, 51)))
    assert [r.status for r in resps] == [201] * 50
    await quiet_gw.caught_up()
    assert await pg.fetchval("SELECT count(*) FROM orders") == 51
    assert len(receiver.requests) == 1 and not receiver.answered

    receiver.release.set()
    ids = [e["id"] for e in await feed(quiet_gw)]
    assert len(ids) == 51
    await receiver.wait_until(lambda: receiver.delivered("h1") == ids)


async def test_two_senders_never_deliver_one_webhook_twice(quiet_gw, make_sender, make_receiver):
    receiver = await make_receiver()
    names = ["a", "b", "c"]
    for name in names:
        await put_hook(quiet_gw, name, receiver.url(name))
    make_sender()
    make_sender()  # as a second gateway process would
    ids = await place(quiet_gw, 20)
    await receiver.wait_until(lambda: all(len(receiver.delivered(n)) >= len(ids) for n in names))
    assert {n: receiver.delivered(n) for n in names} == {n: ids for n in names}


async def test_closed_sender_hands_its_webhook_to_another_which_carries_on_from_the_cursor(
        quiet_gw, make_sender, make_receiver):
    receiver = await make_receiver()
    await put_hook(quiet_gw, "h1", receiver.url("h1"))
    first = make_sender()
    ids = await place(quiet_gw, 3, prefix="one")
    await receiver.wait_until(lambda: receiver.delivered("h1") == ids)
    await first.close()

    make_sender()
    ids = await place(quiet_gw, 3, prefix="two")
    await receiver.wait_until(lambda: len(receiver.delivered("h1")) >= len(ids))
    assert receiver.delivered("h1") == ids


async def test_corrected_url_takes_effect_on_the_next_retry(quiet_gw, make_sender, make_receiver):
    broken = await make_receiver(failures=10**6)
    fixed = await make_receiver()
    await put_hook(quiet_gw, "h1", broken.url("h1"))
    ids = await place(quiet_gw, 2)
    make_sender()
    await broken.wait_until(lambda: len(broken.answered) >= 2)
    assert (await put_hook(quiet_gw, "h1", fixed.url("h1"))).status == 200
    await fixed.wait_until(lambda: fixed.delivered("h1") == ids)


async def test_deleting_a_webhook_ends_its_retries_and_frees_its_lock(quiet_gw, make_sender, make_receiver, pg):
    receiver = await make_receiver(failures=10**6)
    await put_hook(quiet_gw, "h1", receiver.url("h1"))
    await place(quiet_gw, 1)
    make_sender()
    await receiver.wait_until(lambda: len(receiver.answered) >= 2)
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1"
    assert await pg.fetchval(held, LOCK_CLASS) == 1

    assert (await quiet_gw.client.delete("/v1/webhooks/h1", headers=auth("k-admin"))).status == 204

    async def released() -> bool:
        return await pg.fetchval(held, LOCK_CLASS) == 0
    await eventually(released)
    assert await pg.fetchval("SELECT count(*) FROM webhook_attempts") == 0
