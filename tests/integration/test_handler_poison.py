"""A handler that finds an event can never be handled (it raises PoisonMessageError) has it
dead-lettered at once with its reason, on the real RabbitMQ -- not retried through every delay
queue first. The case that needs it: an event whose customer id makes no email address."""

from __future__ import annotations

import time

from services.notification.handlers import NotificationDeps, notify_customer
from services.notification.repository import NotificationRepository
from shared import messaging, topology
from shared.contracts import Envelope, OrderConfirmed
from shared.settings import WarrenSettings
from shared.testing.memory_mongo import AsyncMongomockDatabase
from tests.support.dlq import dead_letters
from tests.support.polling import eventually

RETRY_DELAYS = (1, 1)  # were it retried: 3 attempts over 2 s, then "retries exhausted"


async def test_an_event_whose_customer_makes_no_address_is_dead_lettered_at_once(
    rabbit_url: str, test_queue: topology.ConsumerQueue
) -> None:
    enqueued: list[str] = []

    async def enqueue(notification_id: str) -> None:
        enqueued.append(notification_id)

    deps = NotificationDeps(
        notifications=NotificationRepository(AsyncMongomockDatabase("poison")),
        enqueue=enqueue,
        mail_domain="customers.warren.example",
    )

    async def handler(envelope: Envelope, event: OrderConfirmed) -> list[Envelope]:
        return await notify_customer(envelope, event, deps)

    broker = messaging.make_broker(WarrenSettings(rabbit_url=rabbit_url, service_name="test"))
    await broker.connect()
    await topology.declare_consumer_queue(broker, test_queue, RETRY_DELAYS)
    messaging.subscribe_events(
        broker, test_queue, {OrderConfirmed: handler}, retry_delays=RETRY_DELAYS
    )
    await broker.start()
    forged = Envelope.wrap(
        OrderConfirmed(order_id="o-1", customer_id="victim@evil.example,x", total_cents=1),
        source="order",
    )
    try:
        sent_at = time.monotonic()
        await broker.publish(
            forged.model_dump_json(), queue=test_queue.name, persist=True, message_id=forged.id
        )
        await eventually(
            lambda: dead_letters(rabbit_url, test_queue), until=lambda d: len(d) == 1, timeout=10
        )
        assert time.monotonic() - sent_at < 1.0  # before the first retry delay ran out
    finally:
        await broker.stop()
    [dead] = await dead_letters(rabbit_url, test_queue)
    headers = dead.headers
    assert headers["x-warren-attempts"] == 1
    assert headers["x-warren-reason"] == (
        "poison: customer id 'victim@evil.example,x' cannot make an email address"
    )
    assert enqueued == []
