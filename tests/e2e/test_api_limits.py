"""The input and resource limits of issue 12 against the running system: the real server
reading the socket (uvicorn), the client address it reports, the real broker and SMTP sink.
(tests/unit/test_api_limits.py attacks the same app in process, case by case.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from shared import topology
from shared.contracts import Envelope, OrderConfirmed
from shared.testing.system import System, publish_raw
from tests.support.dlq import dead_letters
from tests.support.orders import as_customer, order_body
from tests.support.polling import eventually

TWO_MB = 2 * 1024 * 1024


async def test_a_2mb_body_padded_in_an_unknown_field_is_refused_with_413(
    api: httpx.AsyncClient,
) -> None:
    padded = json.dumps({**order_body(), "padding": "x" * TWO_MB})
    response = await api.post(
        "/orders", content=padded, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "the request body is larger than 65536 bytes"}
    assert (await api.get("/healthz")).status_code == 200


async def test_a_chunked_2mb_body_is_cut_off_with_413(api: httpx.AsyncClient) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield json.dumps(order_body())[:-1].encode() + b', "padding": "'
        while sent < TWO_MB:
            sent += 16 * 1024
            yield b"x" * 16 * 1024
        yield b'"}'

    try:
        response = await api.post(
            "/orders", content=chunks(), headers={"content-type": "application/json"}
        )
    except httpx.WriteError:
        pytest.fail("the server closed the connection without an answer")
    assert response.status_code == 413
    assert response.json() == {"detail": "the request body is larger than 65536 bytes"}


async def test_an_unknown_field_is_named_and_a_long_value_is_not_echoed(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post("/orders", json={**order_body(), "padding": "x" * 60_000})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "padding"],
            "msg": "Extra inputs are not permitted",
            "type": "extra_forbidden",
        }
    ]


# --- rate limits, on the real server -------------------------------------------------------------

TIGHT = {
    "REQUESTS_PER_SECOND_PER_ADDRESS": "0.1",
    "REQUEST_BURST_PER_ADDRESS": "6",
    "ORDERS_PER_MINUTE_PER_CUSTOMER": "1",
    "ORDER_BURST_PER_CUSTOMER": "2",
}


@pytest.fixture
def tight_limits(system: System) -> Iterator[None]:
    """The order service restarted with tight rate limits; restarted as it was afterwards."""
    system.restart("order", **TIGHT)
    try:
        yield
    finally:
        system.restart("order", **{name: system.env[name] for name in TIGHT})


def forwarded() -> dict[str, str]:
    """A made-up client address, as a client would try to slip past a limit per address."""
    return {"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 250 + 1}"}


@pytest.mark.usefixtures("tight_limits")
async def test_rates_per_customer_and_per_address_hold_whatever_x_forwarded_for_says(
    api: httpx.AsyncClient,
) -> None:
    customer = f"quota-{uuid.uuid4().hex[:8]}"
    posts = [
        await api.post(
            "/orders", json=order_body(), headers={**forwarded(), **as_customer(customer)}
        )
        for _ in range(3)
    ]
    assert [p.status_code for p in posts] == [202, 202, 429]
    assert posts[2].headers["Retry-After"] == "60"
    assert f"too many orders for customer {customer}" in posts[2].json()["detail"]

    polls = [await api.get("/orders/nope", headers=forwarded()) for _ in range(4)]
    assert [p.status_code for p in polls] == [404, 404, 404, 429]  # 3 posts + 3 polls = 6
    assert polls[3].headers["Retry-After"] == "10"
    assert (await api.get("/healthz")).status_code == 200  # probes are never limited


# --- the email recipient ---------------------------------------------------------------------------


async def test_an_event_naming_an_outside_recipient_mails_no_one_and_is_dead_lettered(
    system: System,
) -> None:
    """The attack of issue 12: ``customer_id="victim@evil.example,x"`` made the shop mail an
    outside address. Here the event is genuine -- order's, as an older order service without
    the API's pattern could have stored it -- so that nothing but its recipient is wrong."""
    forged = Envelope.wrap(
        OrderConfirmed(
            order_id=str(uuid.uuid4()), customer_id="victim@evil.example,x", total_cents=100
        ),
        source="order",
    )
    await publish_raw(
        system.env["RABBIT_URL"],
        topology.EVENTS.name,
        forged.type,
        forged.model_dump_json().encode(),
        message_id=forged.id,
        content_type="application/json",
        publisher="order",  # not a forgery: the operator vouches for order's event
    )
    dead = await eventually(
        lambda: dead_letters(system.env["RABBIT_URL"], topology.NOTIFICATION_ORDER_EVENTS),
        until=lambda found: any(m.message_id == forged.id for m in found),
        timeout=20,
        what="the forged event in notification.order-events.dlq",
    )
    [letter] = [dict(m.headers) for m in dead if m.message_id == forged.id]
    assert letter["x-warren-reason"] == (
        "poison: customer id 'victim@evil.example,x' cannot make an email address"
    )
    assert letter["x-warren-attempts"] == 1
    outside = [m for m in system.emails() if "evil.example" in str(m["X-RcptTo"]) + str(m["To"])]
    assert outside == []
    assert system.emails_for(forged.data["order_id"]) == []
