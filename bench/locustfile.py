"""A flash sale in Locust: buyers with user tokens rush one hot SKU and a few warm ones.

Each buyer (an HS256 token signed with OMS_JWT_SECRET, default ``dev-secret``) places
orders, retries the *same* order id after a timeout or a 503 (the gateway answers a retry
with the same order, never a second reservation), pays some of what it got (with the
OMS_BENCH_KEY payments/admin key, default ``dev-admin-key``) and cancels some. A sold-out
``409 insufficient_stock`` is the expected end of a flash sale, counted as a success under
its own name. The test start sets the stock of every sale SKU with the admin key.

    make run                        # in one terminal
    make locust                     # headless: 200 buyers, 50/s, 30 s, then Locust's summary
    .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8080   # web UI on :8089
"""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
import warnings

import jwt
import requests
from locust import HttpUser, between, events, task

SECRET = os.environ.get("OMS_JWT_SECRET", "dev-secret")
SERVICE_KEY = os.environ.get("OMS_BENCH_KEY", "dev-admin-key")
HOT = "FS-HOT"
WARM = ["FS-WARM-1", "FS-WARM-2", "FS-WARM-3"]
STOCK = {HOT: int(os.environ.get("OMS_BENCH_HOT_STOCK", "500")), **dict.fromkeys(WARM, 5000)}
TIMEOUT = 2.0
RETRIES = 3
buyers = itertools.count(1)


@events.test_start.add_listener
def set_stock(environment, **_kwargs) -> None:
    for sku, qty in STOCK.items():
        resp = requests.put(f"{environment.host}/v1/inventory/{sku}", json={"warehouses": {"W1": qty}},
                            headers={"Authorization": f"Bearer {SERVICE_KEY}"}, timeout=10)
        resp.raise_for_status()


class Buyer(HttpUser):
    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        self.user_id = f"buyer-{next(buyers)}-{uuid.uuid4().hex[:6]}"
        with warnings.catch_warnings():  # the development secret is shorter than HS256 wants
            warnings.simplefilter("ignore")
            token = jwt.encode({"sub": self.user_id, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
        self.auth = {"Authorization": f"Bearer {token}"}
        self.pending: list[str] = []

    def order(self, sku: str) -> None:
        order_id = f"lc-{uuid.uuid4().hex}"
        body = {"order_id": order_id, "user_id": self.user_id, "channel": "app",
                "items": [{"sku": sku, "qty": 1}]}
        for attempt in range(RETRIES):
            name = "POST /v1/orders" + (" (retry)" if attempt else "")
            with self.client.post("/v1/orders", json=body, headers=self.auth, timeout=TIMEOUT, name=name,
                                  catch_response=True) as resp:
                if resp.status_code in (200, 201):
                    self.pending.append(order_id)
                    return
                if resp.status_code == 409 and '"insufficient_stock"' in resp.text:
                    resp.success()
                    resp.request_meta["name"] = "POST /v1/orders (sold out)"
                    return
                if resp.status_code not in (0, 503):  # 0: timeout or connection error: retry the same id
                    resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                    return
                resp.failure(f"{resp.status_code or 'timeout'}, retrying {order_id}")

    @task(10)
    def buy_hot(self) -> None:
        self.order(HOT)

    @task(3)
    def buy_warm(self) -> None:
        self.order(random.choice(WARM))

    @task(3)
    def pay(self) -> None:
        if self.pending:
            order_id = self.pending.pop(0)
            self.client.post(f"/v1/orders/{order_id}/payment", json={"payment_id": f"pay-{order_id}", "amount": 0},
                             headers={"Authorization": f"Bearer {SERVICE_KEY}"},
                             name="POST /v1/orders/{id}/payment", timeout=TIMEOUT)

    @task(1)
    def cancel(self) -> None:
        if self.pending:
            order_id = self.pending.pop()
            self.client.post(f"/v1/orders/{order_id}/cancel", json={"reason": "customer"}, headers=self.auth,
                             name="POST /v1/orders/{id}/cancel", timeout=TIMEOUT)
