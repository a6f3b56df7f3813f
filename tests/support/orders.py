"""The order API as the system tests use it: a request body, placing an order, waiting on it."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.polling import eventually

FINAL = {"CONFIRMED", "CANCELLED"}


def order_body(
    *,
    sku: str = "RABBIT-PLUSH",
    quantity: int = 1,
    token: str = "tok_visa",
    customer: str = "bugs-bunny",
) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "lines": [{"sku": sku, "quantity": quantity}],
        "payment_token": token,
    }


async def post_order(
    api: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST the order and check it was accepted (202)."""
    response = await api.post("/orders", json=body, headers=headers or {})
    assert response.status_code == 202, response.text
    return response


async def place(
    api: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None
) -> str:
    """Place an order; returns its id."""
    return (await post_order(api, body, headers)).json()["order_id"]


async def status_of(api: httpx.AsyncClient, order_id: str) -> str:
    response = await api.get(f"/orders/{order_id}")
    return response.json()["status"] if response.status_code == 200 else "unknown"


async def until_status(
    api: httpx.AsyncClient, order_id: str, wanted: set[str], timeout: float = 30
) -> str:
    """Wait until the order's status is one of ``wanted``; returns that status."""
    return await eventually(
        lambda: status_of(api, order_id),
        until=lambda s: s in wanted,
        timeout=timeout,
        what=f"{order_id} in {wanted}",
    )


async def final_order(
    api: httpx.AsyncClient, order_id: str, timeout: float = 20.0
) -> dict[str, Any]:
    """Wait until the order is CONFIRMED or CANCELLED; returns the order as the API shows it."""

    async def probe() -> dict[str, Any]:
        response = await api.get(f"/orders/{order_id}")
        return response.json() if response.status_code == 200 else {}

    return await eventually(
        probe,
        until=lambda o: o.get("status") in FINAL,
        timeout=timeout,
        what=f"order {order_id} final",
    )
