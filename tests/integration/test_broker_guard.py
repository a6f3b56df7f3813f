"""The tests and the benchmark delete Warren's queues -- but never a live system's."""

from __future__ import annotations

import aio_pika
import pytest

from shared import topology
from shared.messaging import make_broker
from shared.settings import RETRY_DELAYS_SECONDS, WarrenSettings
from shared.testing.system import BrokerInUseError, refuse_a_broker_in_use, reset_broker


async def test_a_broker_with_a_live_consumer_is_not_wiped(rabbit_url: str) -> None:
    broker = make_broker(WarrenSettings(rabbit_url=rabbit_url))
    await broker.connect()
    try:
        await topology.declare_topology(broker, RETRY_DELAYS_SECONDS)
    finally:
        await broker.stop()
    queue_name = topology.ALL_QUEUES_WITH_DLQ[0].name
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=queue_name)
        tag = await queue.consume(lambda message: None)  # a live system, never acking

        with pytest.raises(BrokerInUseError, match=queue_name):
            await refuse_a_broker_in_use(rabbit_url, patience=1.0)
        inspect = await connection.channel()
        still_there = await inspect.declare_queue(queue_name, passive=True)
        assert still_there.declaration_result.consumer_count == 1  # untouched

        await queue.cancel(tag)  # the live system stops
    await reset_broker(rabbit_url)  # and now the queues may go
    assert await topology.queues_in_use(rabbit_url) == {}
