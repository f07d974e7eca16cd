"""CSV exports: streamed from a server-side cursor, the list's filters and scope applied,
formula cells neutralised, and a bad filter refused before any byte of CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import time

import aiohttp
import pytest

from tests.conftest import as_user, auth, order_body
from tests.test_lists import money_workload

OPS, PAY, ADMIN, WEB = auth("k-ops"), auth("k-pay"), auth("k-admin"), auth("k-web")
SKU = "X-1"
ROWS = 150_000  # ~10 MB of CSV: more than the socket buffers between server and client hold


async def csv_rows(gw, path: str, headers: dict[str, str] = ADMIN, **params: str) -> list[dict[str, str]]:
    resp = await gw.client.get(path, params=params, headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert resp.headers["Content-Disposition"].startswith("attachment; filename=")
    return list(csv.DictReader(io.StringIO(await resp.text(), newline="")))


async def seed_ledger(pg, count: int, sku: str = SKU) -> None:
    """``count`` ledger rows straight into PostgreSQL, the export's only source: deltas -2..+2."""
    await pg.execute(
        """INSERT INTO inventory_movements (stream_id, sku, warehouse, delta, on_hand_after, reason, order_id, at)
           SELECT $1 || '-' || n, $1, 'W' || (n % 3), (n % 5) - 2, n, 'count', NULL,
                  timestamptz '2026-11-11 00:00:00Z' + n * interval '1 millisecond'
           FROM generate_series(1, $2) AS n""", sku, count)


async def open_exports(pg) -> int:
    """Sessions other than ours inside an export's transaction."""
    return await pg.fetchval(
        """SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE '%inventory_movements m%'
           AND state IN ('active', 'idle in transaction')""")


async def test_movements_export_streams_from_a_cursor_and_parses_back_exactly(make_gateway, pg):
    gw = await make_gateway(export_prefetch=50, max_exports=1)
    await seed_ledger(pg, ROWS)
    await seed_ledger(pg, 10, sku="X-2")
    resp = await gw.client.get("/v1/exports/movements.csv", params={"sku": SKU}, headers=OPS)
    assert resp.status == 200
    assert "Content-Length" not in resp.headers and resp.headers["Transfer-Encoding"] == "chunked"
    first = await resp.content.readany()
    assert first.startswith(b"id,sku,warehouse,delta,on_hand_after,reason,order_id,at\r\n")
    # the client holds the rest back: the server is still inside its cursor's transaction
    assert await open_exports(pg) == 1
    busy = await gw.client.get("/v1/exports/movements.csv", headers=OPS)
    assert (busy.status, (await busy.json())["code"], busy.headers["Retry-After"]) == (503, "exports_busy", "5")
    rows = list(csv.DictReader(io.StringIO((first + await resp.read()).decode(), newline="")))
    assert len(rows) == ROWS
    assert sum(int(r["delta"]) for r in rows) == sum((n % 5) - 2 for n in range(1, ROWS + 1))
    assert {r["sku"] for r in rows} == {SKU}
    assert [int(r["id"]) for r in rows[:3]] == sorted((int(r["id"]) for r in rows[:3]), reverse=True)  # newest first
    assert rows[0]["at"] == "2026-11-11T00:02:30.000Z"
    deadline = time.monotonic() + 5
    while await open_exports(pg):  # the handler closes its transaction after the last chunk is out
        assert time.monotonic() < deadline, "the export's transaction stayed open"
        await asyncio.sleep(0.01)


async def test_postgres_lost_mid_export_cuts_the_transfer_short_and_the_next_export_works(make_gateway, pg):
    """Past the status line no 503 can be sent: the client must see a truncated transfer, never a
    CSV that looks complete."""
    gw = await make_gateway(export_prefetch=50)
    await seed_ledger(pg, ROWS)
    resp = await gw.client.get("/v1/exports/movements.csv", headers=OPS)
    assert resp.status == 200
    await resp.content.readany()
    killed = await pg.fetchval(
        """SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE pid <> pg_backend_pid() AND query LIKE '%inventory_movements m%'
             AND state IN ('active', 'idle in transaction')) t""")
    assert killed == 1
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert len(await csv_rows(gw, "/v1/exports/movements.csv", to="2026-11-11T00:00:00.100Z")) == 99


async def test_movements_export_filters_by_warehouse_and_time_and_covers_every_sku(gw, pg):
    await seed_ledger(pg, 30)
    await seed_ledger(pg, 6, sku="X-2")
    every = await csv_rows(gw, "/v1/exports/movements.csv")
    assert len(every) == 36 and {r["sku"] for r in every} == {SKU, "X-2"}
    some = await csv_rows(gw, "/v1/exports/movements.csv", sku=SKU, warehouse="W1",
                          **{"from": "2026-11-11T00:00:00.010Z", "to": "2026-11-11T00:00:00.020Z"})
    assert sorted(int(r["on_hand_after"]) for r in some) == [n for n in range(10, 20) if n % 3 == 1]


async def test_formula_cells_get_a_leading_quote_and_numbers_stay_numbers(gw, pg):
    await pg.execute(
        """INSERT INTO inventory_movements (stream_id, sku, warehouse, delta, on_hand_after, reason, order_id, at)
           VALUES ('i-1', $1, 'W1', -2, 0, '=cmd|''/c calc''!A1', '-1+1', now()),
                  ('i-2', $1, 'W1', 3, 3, '@SUM(A1)', '+x', now()), ('i-3', $1, 'W1', 1, 4, 'plain', 'o-1', now())""",
        SKU)
    rows = {r["on_hand_after"]: r for r in await csv_rows(gw, "/v1/exports/movements.csv", sku=SKU)}
    assert (rows["0"]["reason"], rows["0"]["order_id"], rows["0"]["delta"]) == ("'=cmd|'/c calc'!A1", "'-1+1", "-2")
    assert (rows["3"]["reason"], rows["3"]["order_id"]) == ("'@SUM(A1)", "'+x")
    assert (rows["4"]["reason"], rows["4"]["order_id"]) == ("plain", "o-1")


async def place(gw, order_id: str, user: str, channel: str = "web", price: int | None = None) -> None:
    item = {"sku": SKU, "qty": 2, **({"unit_price": price} if price is not None else {})}
    resp = await gw.post("/v1/orders", order_body(order_id, user, [item], channel=channel))
    assert resp.status == 201, await resp.text()


async def test_orders_export_has_the_filters_and_scope_of_the_list(gw):
    await gw.set_stock(SKU, {"W1": 100})
    await place(gw, "e-1", "u-1", price=150)
    await place(gw, "e-2", "=HYPERLINK(\"http://x\")", channel="app")
    await place(gw, "e-3", "u-1", channel="app")
    await place(gw, "e-4", "u-2")
    assert (await gw.post("/v1/orders/e-4/cancel", {"reason": "ops"}, OPS)).status == 200
    await gw.caught_up()
    every = await csv_rows(gw, "/v1/exports/orders.csv", OPS)
    assert [r["order_id"] for r in every] == ["e-4", "e-3", "e-2", "e-1"]
    assert every[3] == {"order_id": "e-1", "created_at": every[3]["created_at"], "status": "pending_payment",
                        "user_id": "u-1", "channel": "web", "sale_id": "", "currency": "", "total": "300",
                        "items": f"{SKU}:2", "payment_id": "", "cancel_reason": ""}
    assert every[0]["cancel_reason"] == "ops" and every[0]["total"] == ""
    assert every[2]["user_id"] == "'=HYPERLINK(\"http://x\")"
    listed = await (await gw.client.get("/v1/orders", params={"channel": "app"}, headers=OPS)).json()
    app = await csv_rows(gw, "/v1/exports/orders.csv", OPS, channel="app")
    assert [r["order_id"] for r in app] == [o["order_id"] for o in listed["orders"]] == ["e-3", "e-2"]
    assert [r["order_id"] for r in await csv_rows(gw, "/v1/exports/orders.csv", as_user("u-1"))] == ["e-3", "e-1"]
    assert [r["order_id"] for r in await csv_rows(gw, "/v1/exports/orders.csv", WEB)] == ["e-4", "e-1"]
    # another's orders, asked for by name, are simply not in the caller's export
    assert await csv_rows(gw, "/v1/exports/orders.csv", as_user("u-1"), user_id="u-2") == []
    assert await csv_rows(gw, "/v1/exports/orders.csv", WEB, channel="app") == []
    assert [r["order_id"] for r in await csv_rows(gw, "/v1/exports/orders.csv", OPS, status="cancelled")] == ["e-4"]


async def test_payments_and_refunds_exports_add_up_to_the_lists_totals(gw):
    await money_workload(gw)
    for name in ("payments", "refunds"):
        listed = await (await gw.client.get(f"/v1/{name}", headers=PAY)).json()
        rows = await csv_rows(gw, f"/v1/exports/{name}.csv", PAY)
        assert [r["order_id"] for r in rows] == [p["order_id"] for p in listed[name]]
        assert list(rows[0]) == list(listed[name][0])
        for total in listed["totals"]:
            mine = [r for r in rows if r["currency"] == total["currency"]]
            assert (len(mine), sum(int(r["amount"]) for r in mine)) == (total["count"], total["amount"])
    eur = await csv_rows(gw, "/v1/exports/payments.csv", OPS, currency="EUR")
    assert sorted(r["order_id"] for r in eur) == ["m-0", "m-1", "m-3"]
    assert await csv_rows(gw, "/v1/exports/refunds.csv", OPS, to="2001-01-01T00:00:00Z") == []


@pytest.mark.parametrize(("path", "query", "code"), [
    ("orders.csv", "status=nope", "invalid_status"),
    ("orders.csv", "user_id=u-1%0A", "invalid_user_id"),
    ("orders.csv", "from=0001-01-01T00:00:00%2B14:00", "invalid_from"),
    ("payments.csv", "currency=EUR%00", "invalid_currency"),
    ("refunds.csv", "to=tomorrow", "invalid_to"),
    ("movements.csv", "sku=%00", "invalid_sku"),
    ("movements.csv", "warehouse=W1%0A", "invalid_warehouse"),
    ("movements.csv", "from=99999-01-01T00:00:00Z", "invalid_from"),
])
async def test_bad_filter_is_refused_before_any_byte_of_csv(gw, path, query, code):
    resp = await gw.client.get(f"/v1/exports/{path}?{query}", headers=ADMIN)
    assert resp.status == 422
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code


@pytest.mark.parametrize(("path", "allowed", "refused"), [
    ("orders.csv", (ADMIN, OPS, WEB, as_user("u-1")), (PAY,)),
    ("payments.csv", (ADMIN, OPS, PAY), (WEB, as_user("u-1"))),
    ("refunds.csv", (ADMIN, OPS, PAY), (WEB, as_user("u-1"))),
    ("movements.csv", (ADMIN, OPS), (PAY, WEB, as_user("u-1"))),
], ids=["orders", "payments", "refunds", "movements"])
async def test_exports_answer_their_roles_only(gw, path, allowed, refused):
    for headers in allowed:
        resp = await gw.client.get(f"/v1/exports/{path}", headers=headers)
        assert resp.status == 200 and resp.content_type == "text/csv", await resp.text()
    for headers in refused:
        resp = await gw.client.get(f"/v1/exports/{path}", headers=headers)
        assert resp.status == 403 and (await resp.json())["code"] == "forbidden"
    assert (await gw.client.get(f"/v1/exports/{path}")).status == 401


@pytest.mark.parametrize("path", ["orders.csv", "payments.csv", "refunds.csv", "movements.csv"])
async def test_a_misspelt_filter_is_refused_not_taken_for_no_filter(gw, path):
    resp = await gw.client.get(f"/v1/exports/{path}?currancy=EUR", headers=ADMIN)
    assert resp.status == 422 and (await resp.json())["code"] == "unknown_parameter"
