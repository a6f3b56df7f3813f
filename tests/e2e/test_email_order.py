"""On the real broker: an order's confirmation that reaches notification before the order's
"received" event waits in a delay queue -- held back, no attempt used -- until "received" is
handled, and the two emails are recorded, and sent, in the order of the events."""

from __future__ import annotations

import json
import uuid

import httpx
from pymongo import AsyncMongoClient

from shared import topology
from shared.contracts import Envelope, OrderConfirmed
from shared.testing.system import System, publish_raw
from tests.e2e.test_metrics import families
from tests.support.events import order_placed
from tests.support.polling import eventually

QUEUE = topology.NOTIFICATION_ORDER_EVENTS.name


def held_back(system: System) -> float:
    return sum(
        value
        for name, labels, value in families(system, "notification").get("warren_messages", [])
        if name.endswith("_total")
        and labels.get("queue") == QUEUE
        and labels.get("outcome") == "held_back"
    )


async def to_notification(system: System, envelope: Envelope) -> None:
    """Straight into notification's queue (the default exchange), as the order service's copy:
    nothing else hears of this order."""
    await publish_raw(
        system.env["RABBIT_URL"],
        "",
        QUEUE,
        json.dumps(envelope.model_dump(mode="json")).encode(),
        message_id=envelope.id,
        correlation_id=envelope.correlation_id,
        publisher="order",
    )


async def test_a_confirmation_that_overtakes_the_order_received_waits_for_it(
    system: System, api: httpx.AsyncClient, mongo: AsyncMongoClient
) -> None:
    order_id = str(uuid.uuid4())
    placed = Envelope.wrap(order_placed(order_id), source="order", sequence=1, previous_sequence=0)
    confirmation = OrderConfirmed(order_id=order_id, customer_id="bugs-bunny", total_cents=1250)
    confirmed = Envelope.wrap(confirmation, source="order", sequence=3, previous_sequence=1)
    notifications = mongo[system.database("notification")]["notifications"]

    before = held_back(system)
    await to_notification(system, confirmed)
    await eventually(lambda: held_back(system), until=lambda n: n >= before + 2, timeout=30)
    assert await notifications.count_documents({"order_id": order_id}) == 0  # still waiting

    await to_notification(system, placed)

    async def sent() -> list[dict]:
        cursor = notifications.find({"order_id": order_id, "state": "sent"})
        return [note async for note in cursor]

    notes = await eventually(sent, until=lambda notes: len(notes) == 2, timeout=30)
    by_type = {note["event_type"]: note for note in notes}
    assert by_type["order.placed"]["created_at"] < by_type["order.confirmed"]["created_at"]
    # And sent in that order: the worker sends "confirmed" only once "received" is sent.
    assert by_type["order.placed"]["sent_at"] < by_type["order.confirmed"]["sent_at"]
    assert by_type["order.confirmed"]["after"] == placed.id
    stream = await mongo[system.database("notification")]["order_streams"].find_one(
        {"_id": order_id}
    )
    assert stream["last_applied"] == 3
