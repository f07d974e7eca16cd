"""The console in a real browser: Debian's headless Chromium driven by Playwright against a real gateway
on the suite's real Valkey and PostgreSQL, signing in as each role and doing what staff do.

One browser for the module, a fresh context (no storage, no cookies) per test. Nothing
downloads a browser: Playwright gets ``/usr/bin/chromium``. The console must be built
(``make test`` builds it; the ``console_build`` fixture runs ``make console`` when npm is
there, which rebuilds only when the sources are newer). Screenshots go to each test's
``tmp_path``; ``tests/console_shots.py`` copies a few into docs/ for the README.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.web.console import DEFAULT_DIR
from tests.conftest import auth, order_body, user_token

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000
SHOTS = Path(os.environ.get("CONSOLE_SHOTS_DIR", "")) if os.environ.get("CONSOLE_SHOTS_DIR") else None

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is in the dev extra")
expect = playwright_api.expect
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium; .ci/run does)"),
    pytest.mark.timeout(120),
    pytest.mark.slow,
]
NAV = {  # role: the nav entries it sees, in order (console/src/nav.ts)
    "admin": ["orders", "stock", "sales", "live", "health", "finance"],
    "ops": ["orders", "stock", "sales", "live", "health", "finance"],
    "payments": ["orders", "finance"],
    "storefront": ["orders"],
    "user": ["orders"],
}
KEYS = {"admin": "k-admin", "ops": "k-ops", "payments": "k-pay", "storefront": "k-web"}


@pytest.fixture(scope="module")
def console_build() -> Path:
    """The built console: ``make console`` when npm is there (a no-op when the build is fresh). Under a lock
    on package.json: xdist workers would otherwise build into the same dist/ at once."""
    if shutil.which("npm"):
        with (ROOT / "console" / "package.json").open() as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subprocess.run(["make", "--no-print-directory", "-s", "console"], cwd=ROOT, check=True, timeout=600)
    if not (DEFAULT_DIR / "index.html").is_file():
        pytest.skip("the console is not built and npm is missing (make console needs Node 20 and npm)")
    return DEFAULT_DIR


@pytest.fixture(scope="module")
async def browser(console_build: Path) -> AsyncIterator[Any]:
    # Playwright gives each launch a fresh temporary user-data-dir and removes it at close
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: Any, gw: Any, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A page in a fresh context, pointed at ``gw``; a screenshot of the end state goes to tmp_path."""
    base = str(gw.client.make_url("")).rstrip("/")
    context = await browser.new_context(base_url=base, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    await tab.screenshot(path=str(tmp_path / "end.png"), full_page=True)
    await context.close()
    assert errors == [], errors


async def shot(tab: Any, tmp_path: Path, name: str) -> None:
    """A screenshot into the test's tmp_path, and into CONSOLE_SHOTS_DIR when tests/console_shots.py runs."""
    await tab.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"{name}.png", SHOTS / f"{name}.png")


async def sign_in(tab: Any, bearer: str) -> None:
    await tab.goto("/console/")
    await tab.get_by_test_id("signin-token").fill(bearer)
    await tab.get_by_test_id("signin-submit").click()
    await expect(tab.get_by_test_id("whoami")).to_be_visible()


async def nav_of(tab: Any) -> list[str]:
    links = tab.get_by_test_id("nav").locator("a")
    return [(await link.get_attribute("data-testid")).removeprefix("nav-") for link in await links.all()]


async def seed_order(gw: Any, order_id: str, user: str = "u-1", qty: int = 3, **extra: Any) -> None:
    resp = await gw.post("/v1/orders", order_body(order_id, user, [{"sku": "SKU-1", "qty": qty}], **extra))
    assert resp.status == 201, await resp.text()


async def test_each_role_signs_in_and_sees_its_screens(browser, gw, tmp_path):
    bearers = {**KEYS, "user": user_token("u-7")}
    for role, bearer in bearers.items():
        context = await browser.new_context(base_url=str(gw.client.make_url("")).rstrip("/"))
        context.set_default_timeout(TIMEOUT_MS)
        tab = await context.new_page()
        await sign_in(tab, bearer)
        await expect(tab.get_by_test_id("orders-screen")).to_be_visible()
        assert await nav_of(tab) == NAV[role], role
        who = await tab.get_by_test_id("whoami").inner_text()
        assert {"storefront": "storefront (web)", "user": "user u-7"}.get(role, role) == who
        assert bearer not in tab.url  # the key is never in a URL
        assert bearer in await tab.evaluate("() => JSON.stringify(sessionStorage)")  # kept there only
        assert await tab.evaluate("() => localStorage.length + document.cookie.length") == 0
        await tab.screenshot(path=str(tmp_path / f"signed-in-{role}.png"))
        if role == "ops":  # a screen outside the role's nav sends it home; sign out forgets the key
            await tab.get_by_test_id("signout").click()
            await expect(tab.get_by_test_id("signin")).to_be_visible()
            assert await tab.evaluate("() => sessionStorage.length") == 0
        if role == "storefront":
            await tab.goto("/console/stock")
            await expect(tab.get_by_test_id("orders-screen")).to_be_visible()
        await context.close()


async def test_a_forged_or_unknown_bearer_is_refused_in_plain_words(page, tmp_path):
    await page.goto("/console/orders")  # not signed in: the sign-in page
    await page.get_by_test_id("signin-token").fill(user_token("u-1", secret="forged-secret-0123456789abcdef-forged"))
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("signin-error")).to_contain_text("invalid_token")
    await page.get_by_test_id("signin-token").fill("k-nobody")
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("signin-error")).to_contain_text("Invalid key or token")
    assert await page.evaluate("() => sessionStorage.length") == 0
    await shot(page, tmp_path, "console-signin")


async def test_ops_finds_an_order_cancels_it_and_its_stock_comes_back(page, gw, tmp_path):
    await gw.set_stock("SKU-1", {"W1": 10})
    await seed_order(gw, "web-e2e-cancel", "u-cancel", qty=3)
    await seed_order(gw, "web-e2e-other", "u-other", qty=1)
    await gw.caught_up()  # the list reads PostgreSQL
    before = await gw.stock("SKU-1")
    assert before["available"] == 6 and before["reserved"] == 4

    await sign_in(page, "k-ops")
    await page.get_by_test_id("filter-user").fill("u-cancel")
    await page.get_by_test_id("orders-search").click()
    table = page.get_by_test_id("orders-table")
    await expect(table.get_by_test_id("row-web-e2e-cancel")).to_be_visible()
    await expect(table.get_by_test_id("row-web-e2e-other")).to_have_count(0)
    await shot(page, tmp_path, "console-orders")
    await table.get_by_test_id("row-web-e2e-cancel").get_by_role("link").click()
    await expect(page.get_by_test_id("order-status")).to_have_text("pending payment")
    await expect(page.get_by_test_id("order-allocations")).to_contain_text("W1")
    await page.get_by_test_id("action-cancel").click()
    dialog = page.get_by_test_id("confirm-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_test_id("field-reason").select_option("ops")
    await dialog.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("order-status")).to_have_text("cancelled")
    await expect(dialog).to_have_count(0)
    await expect(page.get_by_test_id("order-actions")).to_have_count(0)  # nothing more to do
    await shot(page, tmp_path, "console-order")

    after = await gw.stock("SKU-1")
    assert after["available"] == before["available"] + 3 and after["reserved"] == before["reserved"] - 3
    assert after["on_hand"] == before["on_hand"]


async def test_a_refused_action_shows_the_api_detail_and_changes_nothing(page, gw):
    await gw.set_stock("SKU-1", {"W1": 10})
    await seed_order(gw, "web-e2e-refused", "u-1", qty=1)
    await sign_in(page, "k-pay")
    await page.get_by_test_id("lookup-order-id").fill("web-e2e-refused")
    await page.get_by_test_id("lookup-open").click()
    await expect(page.get_by_test_id("order-status")).to_have_text("pending payment")
    # the order went away under the console: cancelled by someone else meanwhile
    resp = await gw.client.post("/v1/orders/web-e2e-refused/cancel", json={"reason": "ops"}, headers=auth("k-ops"))
    assert resp.status == 200
    await page.get_by_test_id("action-pay").click()
    await page.get_by_test_id("confirm-ok").click()
    error = page.get_by_test_id("confirm-error")
    await expect(error).to_contain_text("illegal_transition")
    assert (await gw.client.get("/v1/orders/web-e2e-refused", headers=auth("k-ops"))).status == 200


async def test_a_user_sees_only_its_own_orders_and_may_cancel_its_unpaid_one(page, gw):
    await gw.set_stock("SKU-1", {"W1": 10})
    await seed_order(gw, "web-e2e-mine", "u-me", qty=1)
    await seed_order(gw, "web-e2e-theirs", "u-them", qty=1)
    await gw.caught_up()
    await sign_in(page, user_token("u-me"))
    table = page.get_by_test_id("orders-table")
    await expect(table.get_by_test_id("row-web-e2e-mine")).to_be_visible()
    await expect(table.get_by_test_id("row-web-e2e-theirs")).to_have_count(0)
    await page.get_by_test_id("lookup-order-id").fill("web-e2e-theirs")
    await page.get_by_test_id("lookup-open").click()
    await expect(page.get_by_test_id("error")).to_contain_text("No order web-e2e-theirs")
    await page.goto("/console/orders/web-e2e-mine")
    await page.get_by_test_id("action-cancel").click()
    await page.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("order-status")).to_have_text("cancelled")


async def test_hostile_text_from_the_api_is_shown_as_text(page, gw):
    await gw.set_stock("SKU-1", {"W1": 10})
    hostile = '<img src=x onerror="window.__owned=1">'
    await seed_order(gw, "web-e2e-hostile", hostile, qty=1)
    await sign_in(page, "k-ops")
    await page.goto("/console/orders/web-e2e-hostile")
    await expect(page.get_by_test_id("order-user")).to_have_text(hostile)
    assert await page.evaluate("() => window.__owned") is None
    assert await page.locator("img").count() == 0


async def test_warehouse_staff_adjust_stock_and_see_the_ledger_row(page, gw, tmp_path):
    ops = auth("k-ops")
    for wid, body in {"W1": {"region": "east", "priority": 1}, "W2": {"region": "west", "priority": 2},
                      "W9": {"region": "north", "priority": 9, "active": False}}.items():
        assert (await gw.client.put(f"/v1/warehouses/{wid}", json=body, headers=ops)).status == 201
    await gw.set_stock("SKU-S", {"W1": 10, "W2": 4, "W9": 5})
    await sign_in(page, "k-ops")
    await page.get_by_test_id("nav-stock").click()
    row = page.get_by_test_id("sku-table").get_by_test_id("row-SKU-S")
    await expect(row.get_by_test_id("stock-W1")).to_have_text("W1: 10 / 10 (0)")
    await expect(row.locator("[data-col=inactive]")).to_contain_text("W9: 5 on hand")
    await expect(row.locator("[data-col=active]")).not_to_contain_text("W9")
    await expect(page.get_by_test_id("warehouse-table").get_by_test_id("row-W9")).to_be_visible()
    await shot(page, tmp_path, "console-stock")

    await row.get_by_role("link").click()
    await expect(page.get_by_test_id("sku-inactive").get_by_test_id("row-W9")).to_be_visible()
    await page.get_by_test_id("adjust-warehouse").fill("W1")
    await page.get_by_test_id("adjust-delta").fill("25")
    await page.get_by_test_id("adjust-reason").select_option("receipt")
    await page.get_by_test_id("adjust-submit").click()
    await expect(page.get_by_test_id("confirm-dialog")).to_contain_text("Adjust SKU-S at W1 by +25 (receipt)?")
    await page.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("sku-warehouses").get_by_test_id("row-W1").locator("[data-col=on_hand]")).to_have_text("35")
    ledger = page.get_by_test_id("ledger-table")
    newest = ledger.locator("tbody tr").first
    await expect(newest.locator("[data-col=delta]")).to_have_text("+25")
    await expect(newest.locator("[data-col=reason]")).to_have_text("receipt")
    await expect(newest.locator("[data-col=on_hand_after]")).to_have_text("35")
    await expect(newest.locator("[data-col=warehouse]")).to_have_text("W1")
    await shot(page, tmp_path, "console-sku")
    assert (await gw.stock("SKU-S"))["warehouses"]["W1"]["on_hand"] == 35

    # a refusal in the API's words, and nothing changed
    await page.get_by_test_id("adjust-delta").fill("-40")
    await page.get_by_test_id("adjust-submit").click()
    await page.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("confirm-error")).to_contain_text("below_reserved")
    await page.get_by_test_id("confirm-cancel").click()
    assert (await gw.stock("SKU-S"))["warehouses"]["W1"]["on_hand"] == 35

    # a warehouse edited in place
    await page.get_by_test_id("nav-stock").click()
    await page.get_by_test_id("wh-region-W2").fill("south")
    await page.get_by_test_id("wh-priority-W2").fill("3")
    await page.get_by_test_id("wh-save-W2").click()
    await page.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("warehouse-notice")).to_have_text("Saved warehouse W2.")
    listed = (await (await gw.client.get("/v1/warehouses", headers=ops)).json())["warehouses"]
    assert {"warehouse_id": "W2", "region": "south", "priority": 3, "active": True} in listed


async def test_ops_creates_a_sale_and_sees_it_listed_with_live_figures(page, gw, tmp_path):
    await gw.set_stock("SKU-1", {"W1": 50})
    await gw.set_stock("SKU-2", {"W1": 20})
    await sign_in(page, "k-ops")
    await page.get_by_test_id("nav-sales").click()
    await page.get_by_test_id("sale-new").click()
    form = page.get_by_test_id("sale-form")
    await form.get_by_test_id("sale-form-id").fill("s-e2e")
    await form.get_by_test_id("sale-form-starts").fill("2026-01-01T00:00")
    await form.get_by_test_id("sale-form-ends").fill("2199-01-01T00:00")
    await form.get_by_test_id("sale-form-skus").fill("SKU-1, SKU-2")
    await form.get_by_test_id("sale-form-limit").fill("3")
    await form.get_by_test_id("sale-form-channel-web").check()
    await form.get_by_test_id("sale-form-channel-app").check()
    await form.get_by_test_id("sale-form-strategy").select_option("max_stock")
    await form.get_by_test_id("sale-form-ttl").fill("600")
    await form.get_by_test_id("sale-form-currency").fill("EUR")
    await form.get_by_test_id("sale-form-price-SKU-1").fill("1999")
    await form.get_by_test_id("sale-form-save").click()
    await page.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("sale-notice")).to_have_text("Created sale s-e2e.")
    await expect(page.get_by_test_id("sale-remaining")).to_have_text("70")
    stored = await (await gw.client.get("/v1/sales/s-e2e", headers=auth("k-ops"))).json()
    assert stored["skus"] == ["SKU-1", "SKU-2"] and stored["per_user_limit"] == 3
    assert stored["channels"] == ["web", "app"] and stored["strategy"] == "max_stock"
    assert stored["reservation_ttl"] == 600 and stored["prices"] == {"SKU-1": 1999} and stored["currency"] == "EUR"
    assert stored["starts_at"].startswith("2026-01-01T00:00:00") and stored["ends_at"].startswith("2199-01-01")

    # an order in the sale moves sold and remaining on the list
    resp = await gw.post("/v1/orders", order_body("web-e2e-sale", "u-1", [{"sku": "SKU-1", "qty": 2}], sale_id="s-e2e"))
    assert resp.status == 201, await resp.text()
    await page.get_by_test_id("nav-sales").click()
    row = page.get_by_test_id("sales-table").get_by_test_id("row-s-e2e")
    await expect(row.locator("[data-col=sold]")).to_have_text("2")
    await expect(row.locator("[data-col=remaining]")).to_have_text("68")
    await expect(row.locator("[data-col=channels]")).to_have_text("web, app")
    await shot(page, tmp_path, "console-sales")

    # a refusal shown plainly: a window that ends before it starts is caught before sending
    await row.get_by_role("link").click()
    await page.get_by_test_id("sale-form-ends").fill("2025-01-01T00:00")
    await page.get_by_test_id("sale-form-save").click()
    await expect(page.get_by_test_id("sale-form-error")).to_have_text("The sale must end after it starts.")


async def test_finance_pays_and_ships_an_order_and_the_page_shows_payment_shipment_and_timeline(page, gw, tmp_path):
    await gw.set_stock("SKU-1", {"W1": 10})
    body = order_body("web-e2e-pay", "u-1", [{"sku": "SKU-1", "qty": 2, "unit_price": 1250}], currency="EUR")
    assert (await gw.post("/v1/orders", body)).status == 201
    await sign_in(page, "k-pay")
    await page.get_by_test_id("lookup-order-id").fill("web-e2e-pay")
    await page.get_by_test_id("lookup-open").click()
    await expect(page.get_by_test_id("order-total")).to_have_text("€25.00")
    await page.get_by_test_id("action-pay").click()
    dialog = page.get_by_test_id("confirm-dialog")
    await expect(dialog.get_by_test_id("field-amount")).to_have_value("2500")  # the order's total
    await dialog.get_by_test_id("field-payment-id").fill("psp-778")
    await dialog.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("order-status")).to_have_text("paid")
    await expect(page.get_by_test_id("order-payment")).to_have_text("psp-778")
    await page.get_by_test_id("action-ship").click()
    await dialog.get_by_test_id("field-carrier").fill("DHL")
    await dialog.get_by_test_id("field-tracking").fill("JD0146")
    await dialog.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("order-status")).to_have_text("shipped")
    await expect(page.get_by_test_id("order-carrier")).to_have_text("DHL")
    await expect(page.get_by_test_id("order-tracking")).to_have_text("JD0146")
    await expect(page.get_by_test_id("action-complete")).to_be_visible()
    await expect(page.get_by_test_id("action-pay")).to_have_count(0)
    # the timeline reads PostgreSQL: the page looks again until the writer has stored the new event
    await expect(page.get_by_test_id("order-events").locator("li")).to_have_count(3)
    await expect(page.get_by_test_id("event-3")).to_contain_text("shipped")
    await shot(page, tmp_path, "console-order-shipped")
