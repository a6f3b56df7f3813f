"""On the real broker: an order's confirmation that reaches notification before the order's
"received" event waits in a delay queue -- held back, no attempt used -- until "received" is
handled, and the two emails are recorded, and sent, in the order of the events. The same
through partitions by order id (``ORDER_EVENTS_VIA=partitions``), and a switch back that
loses nothing left in a partition."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest
from pymongo import AsyncMongoClient

from shared import topology
from shared.contracts import Envelope, OrderConfirmed
from shared.testing.system import System, publish_raw, rabbitmqctl_command
from tests.e2e.test_metrics import families
from tests.support.events import order_placed
from tests.support.orders import final_order, order_body, place
from tests.support.polling import eventually

QUEUE = topology.NOTIFICATION_ORDER_EVENTS.name


PARTITIONS = topology.NOTIFICATION_ORDER_PARTITIONS


def handled(system: System, queue: str | None = None, outcome: str | None = None) -> float:
    """What notification's consumers did since it started, from its metrics: on ``queue``
    (a partition's name starts with its exchange's), with ``outcome``."""
    return sum(
        value
        for name, labels, value in families(system, "notification").get("warren_messages", [])
        if name.endswith("_total")
        and (queue is None or labels.get("queue", "").startswith(queue))
        and (outcome is None or labels.get("outcome") == outcome)
    )


def held_back(system: System, queue: str = QUEUE) -> float:
    return handled(system, queue, "held_back")


async def to_notification(system: System, envelope: Envelope, exchange: str = "") -> None:
    """Straight to notification, as the order service's copy: nothing else hears of this
    order. Into its queue (the default exchange), or through ``exchange`` (its partitions')."""
    await publish_raw(
        system.env["RABBIT_URL"],
        exchange,
        QUEUE if not exchange else envelope.type,
        json.dumps(envelope.model_dump(mode="json")).encode(),
        message_id=envelope.id,
        correlation_id=envelope.correlation_id,
        publisher="order",
    )


async def sent_in_order(
    mongo: AsyncMongoClient, system: System, placed: Envelope, confirmed: Envelope
) -> None:
    """Both emails sent, "received" first, recorded and sent in the order of the events."""
    notifications = mongo[system.database("notification")]["notifications"]

    async def sent() -> list[dict]:
        cursor = notifications.find({"order_id": placed.correlation_id, "state": "sent"})
        return [note async for note in cursor]

    notes = await eventually(sent, until=lambda notes: len(notes) == 2, timeout=30)
    by_type = {note["event_type"]: note for note in notes}
    assert by_type["order.placed"]["created_at"] < by_type["order.confirmed"]["created_at"]
    # And sent in that order: the worker sends "confirmed" only once "received" is sent.
    assert by_type["order.placed"]["sent_at"] < by_type["order.confirmed"]["sent_at"]
    assert by_type["order.confirmed"]["after"] == placed.id


def overtaking(order_id: str) -> tuple[Envelope, Envelope]:
    """An order's "received" (#1) and its confirmation (#3, which follows #1)."""
    placed = Envelope.wrap(order_placed(order_id), source="order", sequence=1, previous_sequence=0)
    confirmation = OrderConfirmed(order_id=order_id, customer_id="bugs-bunny", total_cents=1250)
    confirmed = Envelope.wrap(confirmation, source="order", sequence=3, previous_sequence=1)
    return placed, confirmed


async def test_a_confirmation_that_overtakes_the_order_received_waits_for_it(
    system: System, api: httpx.AsyncClient, mongo: AsyncMongoClient
) -> None:
    order_id = str(uuid.uuid4())
    placed, confirmed = overtaking(order_id)
    notifications = mongo[system.database("notification")]["notifications"]

    before = held_back(system)
    await to_notification(system, confirmed)
    await eventually(lambda: held_back(system), until=lambda n: n >= before + 2, timeout=30)
    assert await notifications.count_documents({"order_id": order_id}) == 0  # still waiting

    await to_notification(system, placed)

    await sent_in_order(mongo, system, placed, confirmed)
    stream = await mongo[system.database("notification")]["order_streams"].find_one(
        {"_id": order_id}
    )
    assert stream["last_applied"] == 3


async def test_through_partitions_orders_reach_notification_by_partition_and_a_switch_loses_nothing(
    system: System, api: httpx.AsyncClient, mongo: AsyncMongoClient
) -> None:
    system.restart("notification", ORDER_EVENTS_VIA="partitions")
    try:
        # Real orders: every event reaches notification through a partition, none through
        # the single queue, and each order's two emails go out.
        order_ids = [await place(api, order_body(sku="CARROT-MUG")) for _ in range(8)]
        for order_id in order_ids:
            assert (await final_order(api, order_id))["status"] == "CONFIRMED"
        await eventually(
            lambda: [len(system.emails_for(order_id)) for order_id in order_ids],
            until=lambda counts: counts == [2] * len(order_ids),
            timeout=30,
            what="two emails for each order",
        )
        assert handled(system, PARTITIONS.name, "handled") == 2 * len(order_ids)
        assert handled(system, QUEUE) == 0  # nothing through the single queue

        # A partition keeps the order it was given; a confirmation published before its
        # "received" still waits for it (the sequence numbers stay on behind the partitions).
        placed, confirmed = overtaking(str(uuid.uuid4()))
        before = held_back(system, PARTITIONS.name)
        await to_notification(system, confirmed, PARTITIONS.name)
        await eventually(
            lambda: held_back(system, PARTITIONS.name), until=lambda n: n >= before + 1
        )
        await to_notification(system, placed, PARTITIONS.name)
        await sent_in_order(mongo, system, placed, confirmed)
    finally:
        system.restart("notification", ORDER_EVENTS_VIA="queue")

    # Back to one queue: an event left in a partition is still handled, and new orders come
    # through the queue again.
    left = Envelope.wrap(
        order_placed(str(uuid.uuid4())), source="order", sequence=1, previous_sequence=0
    )
    await to_notification(system, left, PARTITIONS.name)
    order_id = await place(api, order_body(sku="CARROT-MUG"))
    await eventually(
        lambda: [len(system.emails_for(left.correlation_id)), len(system.emails_for(order_id))],
        until=lambda counts: counts == [1, 2],
        timeout=30,
        what="the left-over event's email and the new order's two",
    )
    assert handled(system, PARTITIONS.name, "handled") == 1
    assert handled(system, QUEUE, "handled") == 2


def event_bindings(system: System) -> set[tuple[str, str]]:
    """(destination, routing key) of every binding from shop.events to notification."""
    vhost = urlsplit(system.env["RABBIT_URL"]).path.lstrip("/") or "/"
    command = rabbitmqctl_command()
    assert command is not None
    listed = subprocess.run(
        [
            *command,
            "-q",
            "list_bindings",
            "-p",
            vhost,
            "source_name",
            "destination_name",
            "routing_key",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {
        (destination, key)
        for source, destination, key in (line.split("\t") for line in listed.splitlines() if line)
        if source == topology.EVENTS.name and destination.startswith("notification.")
    }


@pytest.mark.skipif(rabbitmqctl_command() is None, reason="needs rabbitmqctl (as root)")
async def test_a_re_provision_that_binds_the_queue_again_is_undone_while_partitions_are_on(
    system: System,
) -> None:
    # The route check's first round comes 8 s after start-up: until then, the re-bind below
    # stands, whatever the machine's speed.
    system.restart(
        "notification", ORDER_EVENTS_VIA="partitions", ORDER_EVENTS_ROUTE_CHECK_SECONDS="8"
    )
    try:
        partitions = {(PARTITIONS.name, key) for key in PARTITIONS.partitions[0].routing_keys}
        # What `warren topology provision` (or the compose broker's boot) does: the single
        # queue bound again. An order event now goes both ways...
        connection = await aio_pika.connect(system.env["RABBIT_URL"])
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(QUEUE)
            for key in PARTITIONS.partitions[0].routing_keys:
                await queue.bind(topology.EVENTS.name, routing_key=key)
        placed = Envelope.wrap(
            order_placed(str(uuid.uuid4())), source="order", sequence=1, previous_sequence=0
        )
        await to_notification(system, placed, topology.EVENTS.name)
        await eventually(
            lambda: (handled(system, QUEUE), handled(system, PARTITIONS.name)),
            until=lambda both: both[0] >= 1 and both[1] >= 1,
            timeout=30,
            what="the event through the queue and through a partition",
        )
        # ... and is emailed once: the second copy found its email recorded.
        await eventually(
            lambda: len(system.emails_for(placed.correlation_id)), until=lambda n: n == 1
        )
        assert handled(system, outcome="duplicate") >= 1
        # Then notification puts its way back: the partitions alone.
        await eventually(
            lambda: asyncio.to_thread(event_bindings, system),
            until=lambda bindings: bindings == partitions,
            timeout=30,
            what="notification back on the partitions alone",
        )
        assert len(system.emails_for(placed.correlation_id)) == 1
    finally:
        system.restart(
            "notification", ORDER_EVENTS_VIA="queue", ORDER_EVENTS_ROUTE_CHECK_SECONDS="30"
        )
