"""Load test for Warren: users place orders and follow each one to its final state.

HTTP latency alone says little here: an order is *done* when the saga ends. So besides the
HTTP calls, every order's end-to-end time (POST -> CONFIRMED/CANCELLED) is reported to Locust as
its own request type ``SAGA``, which appears in the statistics, charts and CSV beside them.

The mix: mostly good orders, some declined cards, some out of stock, a few invalid requests.
All traffic carries the W3C baggage ``synthetic_request=true`` so traces can be told apart.
Each order is one of a thousand customers', placed and followed with that customer's bearer
token (``tokens.py``, signed with ``API_TOKEN_SECRET`` from the environment or ``.env``).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000        # web UI on :8089
    make load                                                               # headless, with reports
"""

from __future__ import annotations

import os
import random
import time
import uuid

from locust import FastHttpUser, between, events, task
from tokens import authorization  # beside this file, like unsampled
from unsampled import unsampled_traceparent  # beside this file (locust puts it on sys.path)

FINAL = {"CONFIRMED", "CANCELLED"}
SAGA_TIMEOUT_S = float(os.environ.get("WARREN_SAGA_TIMEOUT", "30"))
POLL_INTERVAL_S = float(os.environ.get("WARREN_POLL_INTERVAL", "0.05"))
# SKUs with plenty of stock (the demo catalog; `warren seed --reset` refills it).
PLENTIFUL = ["RABBIT-PLUSH", "CARROT-MUG", "WARREN-MAP", "CLOVER-TEA", "HOP-SOCKS", "LETTUCE-BAG"]
SYNTHETIC = {"baggage": "synthetic_request=true"}


# --8<-- [start:place-and-follow]
class Shopper(FastHttpUser):
    wait_time = between(0.5, 2.0)

    def _place_and_follow(self, body: dict, label: str) -> None:
        started = time.perf_counter()
        signed_in = authorization(f"load-{random.randrange(1000)}")  # this order's customer
        headers = {**SYNTHETIC, **signed_in, "Idempotency-Key": str(uuid.uuid4())}
        with self.client.post(
            "/orders", json=body, headers=headers, name="POST /orders", catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            order_id = response.json()["order_id"]
        status, error = None, None
        while time.perf_counter() - started < SAGA_TIMEOUT_S:
            # Each poll says "not sampled": no trace of its own (loadtests/unsampled.py).
            view = self.client.get(
                f"/orders/{order_id}",
                name="GET /orders/[id]",
                headers={**SYNTHETIC, **signed_in, "traceparent": unsampled_traceparent()},
            )
            if view.status_code == 200 and view.json()["status"] in FINAL:
                status = view.json()["status"]
                break
            time.sleep(POLL_INTERVAL_S)
        else:
            error = TimeoutError(f"order {order_id} not final after {SAGA_TIMEOUT_S:g}s")
        events.request.fire(
            request_type="SAGA",
            name=f"{label} -> {status or 'timeout'}",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )
        # --8<-- [end:place-and-follow]

    def _body(self, sku: str, quantity: int, token: str = "tok_visa") -> dict:
        return {"lines": [{"sku": sku, "quantity": quantity}], "payment_token": token}

    # --8<-- [start:mix]
    @task(16)
    def good_order(self) -> None:
        self._place_and_follow(self._body(random.choice(PLENTIFUL), random.randint(1, 3)), "good")

    @task(2)
    def declined_card(self) -> None:
        self._place_and_follow(
            self._body(random.choice(PLENTIFUL), 1, "tok_chargeDeclined"), "declined"
        )

    @task(1)
    def out_of_stock(self) -> None:
        self._place_and_follow(self._body("LAST-CARROT", 2), "out-of-stock")
        # --8<-- [end:mix]

    @task(1)
    def invalid_request(self) -> None:
        body = self._body("NO-SUCH-SKU", 1)
        with self.client.post(
            "/orders",
            json=body,
            headers={**SYNTHETIC, **authorization("load-invalid")},
            name="POST /orders (invalid)",
            catch_response=True,
        ) as response:
            if response.status_code == 422:
                response.success()
            else:
                response.failure(f"expected 422, got {response.status_code}")
