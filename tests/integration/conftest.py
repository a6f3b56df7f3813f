"""Fixtures the broker integration tests share."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from shared import topology


@pytest.fixture
async def test_queue(rabbit_url: str) -> AsyncIterator[topology.ConsumerQueue]:
    """A consumer queue of the test's own, with no bindings: the tests send straight to it.
    Deleted afterwards, with its DLQ."""
    queue = topology.ConsumerQueue(f"test.{uuid.uuid4().hex[:8]}", events=())
    yield queue
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        for name in (queue.name, queue.dlq_name):
            await channel.queue_delete(name)
