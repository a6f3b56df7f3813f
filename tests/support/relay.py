"""The order service's outbox relay, outside the service: for tests that play its part against
the real broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from services.order.repository import EventStore
from shared import messaging
from shared.outbox import OutboxRelay, broker_publisher
from shared.settings import WarrenSettings
from tests.support.broker_users import Broker


@contextlib.asynccontextmanager
async def relay_as_order(
    broker: Broker, store: EventStore, **options: Any
) -> AsyncIterator[OutboxRelay]:
    """A relay on ``store``'s events, connected as the order user, running in the background
    (``options``: OutboxRelay's); stopped, and disconnected, on exit."""
    settings = WarrenSettings(rabbit_url=broker.url("order"), service_name="order")
    amqp = messaging.make_broker(settings)
    await amqp.connect()
    relay = OutboxRelay(store.events, broker_publisher(amqp), **options)
    running = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await amqp.stop()
