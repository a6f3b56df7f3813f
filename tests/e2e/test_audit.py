"""The audit trail of the running system: every event of an order, from the service that
published it, verified -- and a forgery slipped into the audit's queue, with its verdict --
as `warren audit <order id>` shows them."""

from __future__ import annotations

import subprocess

import aio_pika
import httpx
import pytest

from shared import topology
from shared.contracts import Envelope, PaymentSucceeded
from shared.testing.system import System, service_url
from tests.support.orders import final_order, order_body, place
from tests.support.polling import eventually

SAGA = {
    "order.placed": "order",
    "stock.reserved": "inventory",
    "payment.succeeded": "payment",
    "order.confirmed": "order",
}


def rows(shown: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in shown.stdout.splitlines() if " v" in line and "│" in line]


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line


async def forge_payment(system: System, order_id: str) -> None:
    """As a compromised notification service: it may write to the default exchange (it hands
    emails to Celery), so it can put a payment.succeeded straight into the audit's queue."""
    url = service_url(system, "notification")["RABBIT_URL"]
    forged = Envelope.wrap(
        PaymentSucceeded(order_id=order_id, payment_id="ch_forged", amount_cents=1),
        source="payment",
    )
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        message = aio_pika.Message(
            forged.model_dump_json().encode(), message_id=forged.id, user_id="notification"
        )
        await channel.default_exchange.publish(message, routing_key=topology.AUDIT_EVENTS.name)


async def test_an_orders_trail_holds_each_of_its_events_from_its_publisher_and_a_forgery(
    system: System, api: httpx.AsyncClient, wide: None
) -> None:
    order_id = await place(api, order_body(sku="CARROT-MUG"))
    assert (await final_order(api, order_id))["status"] == "CONFIRMED"
    users = bool(service_url(system, "notification"))
    if users:
        await forge_payment(system, order_id)

    shown = await eventually(
        lambda: system.warren("audit", order_id),
        until=lambda shown: len(rows(shown)) == len(SAGA) + users,
        what="every event of the order in its audit trail",
        timeout=20,
    )
    # Verified where each service has a broker user; without users nobody can tell.
    verdict = "verified" if users else "unverified"
    for event_type, publisher in SAGA.items():
        [row] = [r for r in rows(shown) if f"{event_type} v" in r and verdict in r]
        assert f"│ {publisher if users else 'guest'} " in row, row
    if users:
        [forged] = [r for r in rows(shown) if "forged" in r]
        assert "payment.succeeded is published by payment, this one by notification" in forged
        assert "│ notification " in forged and "audit.events" in forged
