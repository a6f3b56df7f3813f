"""Look into a dead-letter queue without emptying it."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shared.topology import ConsumerQueue


async def dead_letters(
    rabbit_url: str, queue: ConsumerQueue, *, remove: frozenset[str] = frozenset()
) -> list[AbstractIncomingMessage]:
    """The messages in ``queue``'s DLQ, left in it: each is taken, then handed back -- except
    those whose message id is in ``remove``, which are taken out for good."""
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.get_queue(queue.dlq_name, ensure=False)
        taken = []
        while (message := await dlq.get(no_ack=False, fail=False)) is not None:
            taken.append(message)
        for message in taken:
            if message.message_id in remove:
                await message.ack()
            else:
                await message.nack(requeue=True)
        return taken
