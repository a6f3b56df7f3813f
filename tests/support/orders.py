"""The order API as the system tests use it: a request body, placing an order as a customer,
waiting on it as an operator.

The client the tests get (``shared.testing.system.api_client``) is signed in as bugs-bunny.
Another customer's request carries its own token (``as_customer``); the helpers that watch an
order until it is final look as an operator does (``as_operator``), whoever placed it.
"""

from __future__ import annotations

from typing import Any

import httpx

from shared import auth
from tests.support.polling import eventually

FINAL = {"CONFIRMED", "CANCELLED"}


def as_customer(customer: str) -> dict[str, str]:
    """The headers of a request made by ``customer``: a bearer token signed with the key the
    system under test verifies with (``API_TOKEN_SECRET``, from .env)."""
    return auth.bearer(customer)


def as_operator() -> dict[str, str]:
    """The headers of a request made by an operator (reads any customer's orders)."""
    return auth.bearer("test-operator", auth.OPERATOR)


def order_body(
    *, sku: str = "RABBIT-PLUSH", quantity: int = 1, token: str = "tok_visa"
) -> dict[str, Any]:
    """A ``POST /orders`` body. No customer: the order is the bearer token's customer's."""
    return {"lines": [{"sku": sku, "quantity": quantity}], "payment_token": token}


def _headers(customer: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    return {**(as_customer(customer) if customer else {}), **(headers or {})}


async def post_order(
    api: httpx.AsyncClient,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    customer: str | None = None,
) -> httpx.Response:
    """POST the order (as ``customer``, else as the client is signed in) and check it was
    accepted (202)."""
    response = await api.post("/orders", json=body, headers=_headers(customer, headers))
    assert response.status_code == 202, response.text
    return response


async def place(
    api: httpx.AsyncClient,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    customer: str | None = None,
) -> str:
    """Place an order (as ``customer``, else as the client is signed in); returns its id."""
    return (await post_order(api, body, headers, customer=customer)).json()["order_id"]


async def status_of(api: httpx.AsyncClient, order_id: str) -> str:
    response = await api.get(f"/orders/{order_id}", headers=as_operator())
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
        response = await api.get(f"/orders/{order_id}", headers=as_operator())
        return response.json() if response.status_code == 200 else {}

    return await eventually(
        probe,
        until=lambda o: o.get("status") in FINAL,
        timeout=timeout,
        what=f"order {order_id} final",
    )
