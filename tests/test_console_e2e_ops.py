"""The console's Finance, Live board and Health screens in headless Chromium against a real gateway:
the board's figures move while orders run and it reconnects after a refusal, a payments CSV saved
by the browser matches what was paid, finance sees totals per currency, and admin repairs drift,
replays a quarantined entry after the fix and moves a failing webhook past its event.

The browser, the page and the sign-in are tests/test_console_e2e.py's (imported, so both files
share one way of driving Chromium); ``shot`` copies console-finance/-live/-health into
``CONSOLE_SHOTS_DIR`` when set, which is how docs/console-*.png are made.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from typing import Any

import pytest

from gateway import keys
from gateway.livestats import HOT_EVERY
from tests.conftest import auth, order_body
from tests.test_console_e2e import (  # noqa: F401  (fixtures)
    browser,
    console_build,
    expect,
    page,
    pytestmark,
    shot,
    sign_in,
)

PAY, OPS = auth("k-pay"), auth("k-ops")
SKU = "FIN-1"


async def paid(gw: Any, order_id: str, qty: int, price: int, currency: str, user: str = "u-1") -> int:
    """An order of ``qty`` at ``price`` minor units, paid in full; returns the amount."""
    body = order_body(order_id, user, [{"sku": SKU, "qty": qty, "unit_price": price}], currency=currency)
    resp = await gw.post("/v1/orders", body)
    assert resp.status == 201, await resp.text()
    amount = qty * price
    resp = await gw.post(f"/v1/orders/{order_id}/payment", {"payment_id": f"pay-{order_id}", "amount": amount}, PAY)
    assert resp.status == 200, await resp.text()
    return amount


async def money(gw: Any) -> dict[str, tuple[int, int]]:
    """Three EUR payments and two JPY ones, one EUR order refunded in part; the totals paid by currency."""
    await gw.set_stock(SKU, {"W1": 100})
    sums: dict[str, tuple[int, int]] = {}
    for n, (currency, qty, price) in enumerate([("EUR", 2, 1250), ("EUR", 1, 999), ("JPY", 3, 500),
                                                ("EUR", 4, 75), ("JPY", 1, 12000)]):
        amount = await paid(gw, f"fin-{n}", qty, price, currency, user=f"u-{n}")
        count, total = sums.get(currency, (0, 0))
        sums[currency] = (count + 1, total + amount)
    resp = await gw.post("/v1/orders/fin-0/refund", {"reason": "damaged", "amount": 500}, PAY)
    assert resp.status == 200, await resp.text()
    await gw.caught_up()  # the lists read PostgreSQL
    return sums


@pytest.fixture
def tab(page: Any) -> Any:  # noqa: F811  (C's page: a fresh context, its end state screenshot)
    return page


def cell(tab: Any, currency: str, col: str) -> Any:
    return tab.get_by_test_id(f"total-{currency}").locator(f'[data-col="{col}"]')


async def test_finance_sees_payment_totals_per_currency(tab, gw, tmp_path):
    sums = await money(gw)
    assert sums == {"EUR": (3, 3799), "JPY": (2, 13500)}
    await sign_in(tab, "k-pay")
    await tab.get_by_test_id("nav-finance").click()
    await expect(cell(tab, "EUR", "paid")).to_have_text("€37.99")
    await expect(cell(tab, "EUR", "payments")).to_have_text("3")
    await expect(cell(tab, "EUR", "refunded")).to_have_text("€5.00")
    await expect(cell(tab, "EUR", "net")).to_have_text("€32.99")
    await expect(cell(tab, "JPY", "paid")).to_have_text("¥13,500")
    await expect(cell(tab, "JPY", "payments")).to_have_text("2")
    await expect(tab.get_by_test_id("payments-table").locator("tbody tr")).to_have_count(5)
    await expect(tab.get_by_test_id("refunds-table").get_by_test_id(re.compile("^row-fin-0-"))).to_have_count(1)
    # a payments key exports money only: no orders or movements buttons
    await expect(tab.get_by_test_id("export-orders")).to_have_count(0)
    await expect(tab.get_by_test_id("export-movements")).to_have_count(0)
    await shot(tab, tmp_path, "console-finance")

    await tab.get_by_test_id("finance-currency").fill("JPY")  # one currency: the API's totals follow
    await tab.get_by_test_id("finance-load").click()
    await expect(tab.get_by_test_id("total-EUR")).to_have_count(0)
    await expect(cell(tab, "JPY", "paid")).to_have_text("¥13,500")
    await expect(tab.get_by_test_id("payments-table").locator("tbody tr")).to_have_count(2)
    await tab.get_by_test_id("finance-currency").fill("eu")  # refused before any call
    await tab.get_by_test_id("finance-load").click()
    await expect(tab.get_by_test_id("finance-form-error")).to_contain_text("three letters")


async def test_admin_exports_a_payments_csv_that_matches_what_was_paid(tab, gw, tmp_path):
    sums = await money(gw)
    await sign_in(tab, "k-admin")
    await tab.get_by_test_id("nav-finance").click()
    await expect(cell(tab, "EUR", "paid")).to_have_text("€37.99")
    requests: list[Any] = []
    tab.on("request", lambda r: requests.append(r))
    async with tab.expect_download() as info:
        await tab.get_by_test_id("export-payments").click()
    download = await info.value
    assert re.fullmatch(r"payments_\d{8}T\d{4}Z-\d{8}T\d{4}Z\.csv", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    await expect(tab.get_by_test_id("export-done")).to_contain_text(download.suggested_filename)

    (export,) = [r for r in requests if "/v1/exports/payments.csv" in r.url]
    assert "k-admin" not in export.url  # the key went in the header only
    assert (await export.all_headers())["authorization"] == "Bearer k-admin"
    rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert sorted(r["order_id"] for r in rows) == [f"fin-{n}" for n in range(5)]
    assert {r["payment_id"] for r in rows} == {f"pay-fin-{n}" for n in range(5)}
    got: dict[str, tuple[int, int]] = {}
    for r in rows:
        count, total = got.get(r["currency"], (0, 0))
        got[r["currency"]] = (count + 1, total + int(r["amount"]))
    assert got == sums


async def test_ops_watches_the_live_board_count_orders_as_they_run(tab, gw, tmp_path):
    await gw.set_stock("LIVE-1", {"W1": 100})
    await gw.set_stock("LIVE-2", {"W1": 4})
    await sign_in(tab, "k-ops")
    opened: list[Any] = []

    async def first_one_refused(route: Any) -> None:  # a gateway that is briefly overloaded, then fine
        opened.append(route.request)
        if len(opened) == 1:
            await route.fulfill(status=503, content_type="application/problem+json", headers={"Retry-After": "1"},
                                body='{"code": "overloaded", "detail": "Try again shortly"}')
        else:
            await route.continue_()

    await tab.route("**/v1/stats/stream*", first_one_refused)
    await tab.get_by_test_id("nav-live").click()
    connection = tab.get_by_test_id("live-connection")
    await expect(connection).to_have_attribute("data-state", "reconnecting")
    await expect(tab.get_by_test_id("live-reason")).to_contain_text("overloaded")
    await expect(connection).to_have_attribute("data-state", "open")
    assert len(opened) == 2
    for request in opened:  # fetch, the key in its header only
        assert "k-ops" not in request.url and (await request.all_headers())["authorization"] == "Bearer k-ops"
    await expect(tab.get_by_test_id("live-at")).to_be_visible()  # a first stats event came
    await expect(tab.get_by_test_id("live-accepted-total")).to_have_text("0")

    async def order(n: int, sku: str) -> int:
        return (await gw.post("/v1/orders", order_body(f"live-{sku}-{n}", f"u-{n}", [{"sku": sku, "qty": 1}]))).status

    statuses = await asyncio.gather(*(order(n, "LIVE-1") for n in range(24)))
    assert statuses == [201] * 24
    statuses = [await order(n, "LIVE-2") for n in range(6)]  # four sell it out, two are refused
    assert statuses == [201] * 4 + [409] * 2
    await expect(tab.get_by_test_id("live-accepted-total")).to_have_text("28")
    await expect(tab.get_by_test_id("refusal-insufficient_stock").locator('[data-col="total"]')).to_have_text("2")
    await gw.caught_up()  # the sell-out commits to the feed the stream tails
    alerts = tab.get_by_test_id("live-alerts")
    await expect(alerts.get_by_text("sold out")).to_have_count(1)
    await expect(alerts).to_contain_text("LIVE-2")
    # best sellers are read every HOT_EVERY s: the reading after the commit may be that far off
    await expect(tab.get_by_test_id("hot-LIVE-1").locator('[data-col="available"]')).to_have_text(
        "76", timeout=(HOT_EVERY + 5) * 1000)
    await expect(connection).to_have_attribute("data-state", "open")
    await shot(tab, tmp_path, "console-live")


async def test_admin_sees_a_quarantined_entry_and_replays_it_after_the_fix(tab, gw, pg, tmp_path):
    await gw.set_stock(SKU, {"W1": 10})
    await pg.execute("ALTER TABLE orders ADD CONSTRAINT not_this_user CHECK (user_id <> 'victim')")
    try:
        resp = await gw.post("/v1/orders", order_body("held-1", "victim", [{"sku": SKU, "qty": 1}]))
        assert resp.status == 201
        await gw.caught_up()
    finally:
        await pg.execute("ALTER TABLE orders DROP CONSTRAINT not_this_user")  # the fix

    await sign_in(tab, "k-ops")  # ops reads the health, and may not act
    await tab.get_by_test_id("nav-health").click()
    await expect(tab.get_by_test_id("quarantine-count")).to_have_text("1 open")
    await expect(tab.get_by_test_id("health-readonly")).to_be_visible()
    await expect(tab.get_by_test_id("quarantine-replay-all")).to_have_count(0)
    await expect(tab.get_by_test_id("recon-repair")).to_have_count(0)
    await expect(tab.get_by_test_id("webhooks")).to_contain_text("admin's")  # GET /v1/webhooks is admin's
    await tab.get_by_test_id("signout").click()

    await sign_in(tab, "k-admin")
    await tab.get_by_test_id("nav-health").click()
    await expect(tab.get_by_test_id("recon-ok")).to_have_text("needs attention")
    await expect(tab.get_by_test_id("recon-quarantined")).to_contain_text("1 quarantined entry")
    table = tab.get_by_test_id("quarantine-table")
    await expect(table.locator('[data-col="order"]')).to_have_text("held-1")
    await expect(table.locator('[data-col="error"]')).to_contain_text("not_this_user")
    await expect(tab.get_by_test_id("webhooks-table")).to_contain_text("No webhooks.")
    await shot(tab, tmp_path, "console-health")

    await tab.get_by_test_id("quarantine-replay-all").click()
    dialog = tab.get_by_test_id("confirm-dialog")
    await expect(dialog).to_contain_text("all 1 open entries")
    await dialog.get_by_test_id("confirm-ok").click()
    await expect(dialog).to_have_count(0)
    await expect(tab.get_by_test_id("replay-result")).to_contain_text("written: entry")
    await expect(tab.get_by_test_id("quarantine-count")).to_have_text("0 open")
    await expect(tab.get_by_test_id("recon-ok")).to_have_text("ok")
    assert await pg.fetchval("SELECT user_id FROM orders WHERE order_id = 'held-1'") == "victim"


async def test_admin_repairs_hand_made_drift_after_confirming(tab, gw, redis):
    await gw.set_stock("REP-1", {"W1": 10})
    await gw.caught_up()
    await redis.hincrby(keys.stock("REP-1"), "W1", 3)  # Redis says 13 available, PostgreSQL 10
    await sign_in(tab, "k-admin")
    await tab.get_by_test_id("nav-health").click()
    await expect(tab.get_by_test_id("recon-ok")).to_have_text("needs attention")
    drift = tab.get_by_test_id("recon-drift").get_by_test_id("row-REP-1@W1")
    await expect(drift.locator('[data-col="redis"]')).to_have_text("13 / 0 / 13")
    await expect(drift.locator('[data-col="postgres"]')).to_have_text("10 / 0 / 10")
    await tab.get_by_test_id("recon-repair").click()
    dialog = tab.get_by_test_id("confirm-dialog")
    await dialog.get_by_test_id("confirm-cancel").click()  # backing out changes nothing
    await expect(dialog).to_have_count(0)
    assert (await gw.stock("REP-1"))["available"] == 13
    await tab.get_by_test_id("recon-repair").click()
    await dialog.get_by_test_id("confirm-ok").click()
    await expect(tab.get_by_test_id("health-notice")).to_have_text("Repaired 1, refused 0.")
    await expect(tab.get_by_test_id("repair-result")).to_contain_text("13 / 0 / 13 → 10 / 0 / 10")
    await expect(tab.get_by_test_id("recon-ok")).to_have_text("ok")
    await expect(tab.get_by_test_id("recon-repair")).to_be_disabled()  # nothing left to repair
    assert (await gw.stock("REP-1"))["available"] == 10


async def test_admin_sees_a_failing_webhooks_attempts_and_replays_past_the_event(tab, gw, tmp_path):
    hook = await gw.client.put("/v1/webhooks/erp", headers=auth("k-admin"), json={
        "url": "http://127.0.0.1:9/hooks", "events": ["*"], "secret": "whsec-0123456789abcdef"})  # nobody listens
    assert hook.status == 201, await hook.text()
    await gw.set_stock(SKU, {"W1": 10})
    assert (await gw.post("/v1/orders", order_body("wh-1", "u-1", [{"sku": SKU, "qty": 1}]))).status == 201
    await gw.caught_up()

    async def failing() -> dict[str, Any]:  # the sender's own pace: poll its record, no fixed sleep
        while True:
            got = await (await gw.client.get("/v1/webhooks/erp/attempts", headers=auth("k-admin"))).json()
            if got["failing"] and len(got["attempts"]) >= 2:
                return got
            await asyncio.sleep(0.05)

    attempts = await asyncio.wait_for(failing(), 20)
    event_id = attempts["attempts"][0]["event_id"]
    await sign_in(tab, "k-admin")
    await tab.get_by_test_id("nav-health").click()
    await tab.get_by_test_id("webhook-attempts-erp").click()
    panel = tab.get_by_test_id("webhook-attempts")
    await expect(panel.get_by_test_id("webhook-failing")).to_have_text("failing")
    await expect(panel.get_by_test_id(f"row-{event_id}-1")).to_contain_text("none")  # no HTTP status came
    await expect(panel.get_by_test_id("webhook-replay-from")).to_have_value(str(event_id))  # the first failed
    await tab.get_by_test_id("webhook-replay-from").fill(str(event_id + 1))  # pass over it
    await tab.get_by_test_id("webhook-replay").click()
    dialog = tab.get_by_test_id("confirm-dialog")
    await expect(dialog).to_contain_text(f"the cursor goes to {event_id}")
    await dialog.get_by_test_id("confirm-ok").click()
    await expect(tab.get_by_test_id("health-notice")).to_contain_text(f"from event {event_id + 1}")
    row = tab.get_by_test_id("webhook-erp")
    await expect(row.locator("td").nth(3)).to_have_text(str(event_id))
    listed = await (await gw.client.get("/v1/webhooks", headers=auth("k-admin"))).json()
    assert [h["last_event_id"] for h in listed["webhooks"]] == [event_id]


@pytest.mark.parametrize("role", ["ops", "payments"])
async def test_a_screen_the_role_has_no_entry_for_is_not_offered(tab, role):
    await sign_in(tab, {"ops": "k-ops", "payments": "k-pay"}[role])
    await tab.goto("/console/health")
    screen = "health-screen" if role == "ops" else "orders-screen"  # payments is sent home
    await expect(tab.get_by_test_id(screen)).to_be_visible()
