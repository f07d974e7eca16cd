"""Delivery health over HTTP: the quarantine listed and replayed (``/v1/quarantine``), and a
webhook's attempts and replay (``/v1/webhooks/{id}/attempts``, ``/replay``) against a real
receiver answering 500, then 200; a replay while an event is in flight is not undone."""

from __future__ import annotations

import msgspec
import pytest

from gateway.web import schemas as S
from tests.conftest import auth, order_body, user_token
from tests.test_quarantine import accepted_entry
from tests.test_webhooks import booked, eventually, feed, make_receiver, make_sender, place, put_hook, quiet_gw  # noqa: F401  (fixtures)

ADMIN, OPS = auth("k-admin"), auth("k-ops")
SKU = "HQ-1"
USER = {"Authorization": f"Bearer {user_token('u-1')}"}


async def submit(gw, order_id: str, user_id: str = "u-1") -> None:
    resp = await gw.post("/v1/orders", order_body(order_id, user_id, [{"sku": SKU, "qty": 1}]))
    assert resp.status == 201, await resp.text()


async def listed(gw, headers=OPS) -> S.QuarantineList:
    resp = await gw.client.get("/v1/quarantine", headers=headers)
    assert resp.status == 200, await resp.text()
    return msgspec.json.decode(await resp.read(), type=S.QuarantineList)


async def replay(gw, body=None, headers=ADMIN) -> S.QuarantineReplay:
    resp = await gw.client.post("/v1/quarantine/replay", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    return msgspec.json.decode(await resp.read(), type=S.QuarantineReplay)


# --- the quarantine ------------------------------------------------------------------------


async def test_quarantine_is_listed_and_a_replay_after_the_fix_writes_the_entries(gw, redis, pg):
    await gw.set_stock(SKU, {"W1": 10})
    await pg.execute("ALTER TABLE orders ADD CONSTRAINT not_this_user CHECK (user_id <> 'victim')")
    try:
        await submit(gw, "hq-held", "victim")
        await accepted_entry(redis, "hq-poison", ship_to={"region": "\x00"})  # never writable
        await submit(gw, "hq-fine")
        await gw.caught_up()
        found = await listed(gw)
        assert found.count == 2 and [(e.type, e.order_id) for e in found.entries] == [
            ("order.accepted", "hq-held"), ("order.accepted", "hq-poison")]
        held, poison = found.entries
        assert held.fields["o"] == "hq-held" and "not_this_user" in held.error
        assert '"region":"\\u0000"' in poison.fields["p"]  # the raw payload, as the stream held it
        assert (await listed(gw, ADMIN)).count == 2

        refused = await replay(gw)  # not fixed yet: both stay
        assert refused.replayed == [] and [r.id for r in refused.refused] == [held.id, poison.id]
    finally:
        await pg.execute("ALTER TABLE orders DROP CONSTRAINT not_this_user")

    assert await replay(gw, {"ids": [10**12]}) == S.QuarantineReplay([], [])  # no such entry: nothing
    assert await replay(gw, {"ids": []}) == S.QuarantineReplay([], [])
    done = await replay(gw, {"ids": [held.id]})
    assert [(r.id, r.stream_id) for r in done.replayed] == [(held.id, held.stream_id)] and done.refused == []
    assert await pg.fetchval("SELECT user_id FROM orders WHERE order_id = 'hq-held'") == "victim"
    left = await listed(gw)
    assert left.count == 1 and [e.id for e in left.entries] == [poison.id]
    again = await replay(gw)  # the rest: still bad, still there
    assert again.replayed == [] and [r.id for r in again.refused] == [poison.id]


async def test_an_empty_quarantine(gw):
    assert await listed(gw) == S.QuarantineList([], 0)
    resp = await gw.client.post("/v1/quarantine/replay", headers=ADMIN)  # no body: every open entry
    assert resp.status == 200 and await resp.json() == {"replayed": [], "refused": []}


@pytest.mark.parametrize("headers,list_status,replay_status", [
    (OPS, 200, 403), (auth("k-pay"), 403, 403), (auth("k-web"), 403, 403), (USER, 403, 403), ({}, 401, 401),
], ids=["ops", "payments", "storefront", "user", "none"])
async def test_who_may_list_and_replay_the_quarantine(gw, headers, list_status, replay_status):
    resp = await gw.client.get("/v1/quarantine", headers=headers)
    assert resp.status == list_status
    resp = await gw.client.post("/v1/quarantine/replay", json={}, headers=headers)
    assert resp.status == replay_status and resp.content_type == "application/problem+json"


@pytest.mark.parametrize("body", [
    {"ids": ["1"]}, {"ids": [0]}, {"ids": [-1]}, {"ids": [2**63]}, {"ids": [1.5]}, {"ids": "1"},
    {"ids": list(range(1, 1002))}, {"id": [1]}, [1],
])
async def test_a_malformed_replay_body_is_422_and_replays_nothing(gw, redis, pg, body):
    await accepted_entry(redis, "hq-bad", ship_to={"region": "\x00"})
    await gw.caught_up()
    resp = await gw.client.post("/v1/quarantine/replay", json=body, headers=ADMIN)
    assert resp.status == 422 and (await resp.json())["code"] == "invalid"
    assert (await listed(gw)).count == 1


# --- webhook attempts and replay ------------------------------------------------------------


async def attempts(gw, hook_id: str, query: str = "") -> S.AttemptList:
    resp = await gw.client.get(f"/v1/webhooks/{hook_id}/attempts{query}", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return msgspec.json.decode(await resp.read(), type=S.AttemptList)


async def rewind(gw, hook_id: str, from_event_id: int) -> S.Webhook:
    resp = await gw.client.post(f"/v1/webhooks/{hook_id}/replay", json={"from_event_id": from_event_id},
                                headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return msgspec.json.decode(await resp.read(), type=S.Webhook)


async def test_attempts_show_the_failures_newest_first_then_the_delivery(quiet_gw, make_sender, make_receiver, pg):  # noqa: F811
    gw = quiet_gw
    receiver = await make_receiver(failures=2)
    assert (await put_hook(gw, "hq-h", receiver.url("h"))).status == 201
    empty = await attempts(gw, "hq-h")
    assert (empty.attempts, empty.failing) == ([], False)
    make_sender()
    (event_id,) = await place(gw, 1, "hq")
    await receiver.wait_until(lambda: receiver.delivered("h") == [event_id])
    await booked(pg, "hq-h", lambda rows: len(rows) == 3)
    seen = await attempts(gw, "hq-h")
    assert [(a.event_id, a.attempt, a.status, a.error) for a in seen.attempts] == [
        (event_id, 3, 200, None), (event_id, 2, 500, None), (event_id, 1, 500, None)]
    assert seen.failing is False and seen.last_event_id == event_id
    assert all(a.duration_ms >= 0 for a in seen.attempts)
    assert [a.attempt for a in (await attempts(gw, "hq-h", "?limit=1")).attempts] == [3]


async def test_a_receiver_that_never_answers_shows_as_failing(quiet_gw, make_sender, make_receiver, pg):  # noqa: F811
    gw = quiet_gw
    receiver = await make_receiver(start=False)  # bound, not listening: refused
    assert (await put_hook(gw, "hq-down", receiver.url("down"))).status == 201
    make_sender()
    (event_id,) = await place(gw, 1, "hqd")
    await booked(pg, "hq-down", lambda rows: len(rows) >= 2)
    seen = await attempts(gw, "hq-down")
    assert seen.failing is True and seen.last_event_id < event_id
    newest = seen.attempts[0]
    assert (newest.event_id, newest.status) == (event_id, None) and newest.error
    await receiver.start()
    await receiver.wait_until(lambda: receiver.delivered("down") == [event_id])
    await eventually(lambda: attempts_not_failing(gw, "hq-down"))


async def attempts_not_failing(gw, hook_id: str) -> bool:
    return not (await attempts(gw, hook_id)).failing


async def test_replay_delivers_again_from_the_event_named(quiet_gw, make_sender, make_receiver, pg):  # noqa: F811
    gw = quiet_gw
    receiver = await make_receiver()
    assert (await put_hook(gw, "hq-r", receiver.url("r"))).status == 201
    make_sender()
    ids = await place(gw, 3, "hqr")
    await receiver.wait_until(lambda: receiver.delivered("r") == ids)
    hook = await rewind(gw, "hq-r", ids[1])
    assert (hook.id, hook.last_event_id) == ("hq-r", ids[1] - 1)
    await receiver.wait_until(lambda: receiver.delivered("r") == ids + ids[1:])
    await booked(pg, "hq-r", lambda rows: len(rows) == 5)
    seen = await attempts(gw, "hq-r")
    assert [(a.event_id, a.attempt) for a in seen.attempts] == [(ids[2], 2), (ids[1], 2), (ids[2], 1),
                                                                (ids[1], 1), (ids[0], 1)]
    assert seen.last_event_id == ids[2]


async def test_a_replay_while_an_event_is_in_flight_is_not_undone_by_its_delivery(
        quiet_gw, make_sender, make_receiver, pg):  # noqa: F811
    """The sender moves the cursor only from where it left it: the 2xx of the event in flight
    must not carry the cursor past the events the replay asked for again."""
    gw = quiet_gw
    (before,) = await place(gw, 1, "hqa")  # in the feed before the webhook: not delivered yet
    receiver = await make_receiver(hold=1)
    assert (await put_hook(gw, "hq-f", receiver.url("f"))).status == 201
    make_sender()
    ids = await place(gw, 2, "hqb")
    (in_flight,) = [i for i in ids if i > before][:1]
    await receiver.wait_until(lambda: len(receiver.requests) == 1)  # held at the receiver
    assert receiver.requests[0].event_id == in_flight
    assert (await rewind(gw, "hq-f", before)).last_event_id == before - 1
    receiver.release.set()
    later = [i for i in ids if i > in_flight]
    await receiver.wait_until(lambda: receiver.delivered("f") == [in_flight, before, in_flight, *later])
    await eventually(lambda: cursor_is(pg, "hq-f", ids[-1]))


async def cursor_is(pg, hook_id: str, event_id: int) -> bool:
    return await pg.fetchval("SELECT last_event_id FROM webhooks WHERE webhook_id = $1", hook_id) == event_id


async def test_replay_refuses_past_the_feeds_end_and_unknown_webhooks(gw):
    await put_hook(gw, "hq-x", "http://127.0.0.1:9/x")
    end = max([e["id"] for e in await feed(gw)], default=0)
    assert (await rewind(gw, "hq-x", end + 1)).last_event_id == end  # from the next event: nothing again
    resp = await gw.client.post("/v1/webhooks/hq-x/replay", json={"from_event_id": end + 2}, headers=ADMIN)
    assert resp.status == 422 and (await resp.json())["code"] == "invalid_from_event_id"
    resp = await gw.client.post("/v1/webhooks/hq-none/replay", json={"from_event_id": 1}, headers=ADMIN)
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"
    resp = await gw.client.get("/v1/webhooks/hq-none/attempts", headers=ADMIN)
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"


@pytest.mark.parametrize("body", [{}, {"from_event_id": 0}, {"from_event_id": -1}, {"from_event_id": 2**63},
                                  {"from_event_id": "1"}, {"from_event_id": 1.5}, {"from_event_id": 1, "x": 1}])
async def test_a_malformed_replay_is_422(gw, body):
    await put_hook(gw, "hq-y", "http://127.0.0.1:9/y")
    resp = await gw.client.post("/v1/webhooks/hq-y/replay", json=body, headers=ADMIN)
    assert resp.status == 422 and (await resp.json())["code"] == "invalid"


@pytest.mark.parametrize("query,code", [
    ("?limit=0", "invalid_limit"), ("?limit=201", "invalid_limit"), ("?limit=abc", "invalid_limit"),
    ("?limit=1%00", "invalid_limit"), ("?limit=1&limit=2", "invalid_limit"), ("?limit=-1", "invalid_limit"),
    ("?limit=1e1", "invalid_limit"), ("?x=1", "unknown_parameter"),
])
async def test_hostile_attempt_queries_are_422(gw, query, code):
    await put_hook(gw, "hq-q", "http://127.0.0.1:9/q")
    resp = await gw.client.get(f"/v1/webhooks/hq-q/attempts{query}", headers=ADMIN)
    assert resp.status == 422 and (await resp.json())["code"] == code, query


@pytest.mark.parametrize("path", ["/v1/webhooks/bad%00id/attempts", "/v1/webhooks/" + "a" * 65 + "/attempts"])
async def test_a_malformed_webhook_id_is_422(gw, path):
    resp = await gw.client.get(path, headers=ADMIN)
    assert resp.status == 422 and (await resp.json())["code"] == "invalid_webhook_id"


@pytest.mark.parametrize("headers,status", [(OPS, 403), (auth("k-pay"), 403), (USER, 403), ({}, 401)],
                         ids=["ops", "payments", "user", "none"])
async def test_webhook_attempts_and_replay_are_admin_only(gw, headers, status):
    await put_hook(gw, "hq-z", "http://127.0.0.1:9/z")
    assert (await gw.client.get("/v1/webhooks/hq-z/attempts", headers=headers)).status == status
    resp = await gw.client.post("/v1/webhooks/hq-z/replay", json={"from_event_id": 1}, headers=headers)
    assert resp.status == status and resp.content_type == "application/problem+json"
