"""The reference row: the same two patterns on RabbitMQ, in the vhost `warren-labs`."""

from __future__ import annotations

import aio_pika
from faststream.rabbit import RabbitBroker, RabbitQueue

# The labs never touch Warren's own vhost "/": they run in one of their own.
CREATE_VHOST = (
    "rabbitmqctl add_vhost warren-labs && "
    "rabbitmqctl set_permissions -p warren-labs guest '.*' '.*' '.*'"
)


async def check_vhost(url: str) -> None:
    """Fail with the command that fixes it when the labs' vhost is missing."""
    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception as exc:
        raise SystemExit(f"cannot open {url} ({exc!r}); create the vhost: {CREATE_VHOST}") from exc
    await connection.close()


async def declare(broker: RabbitBroker, queue: RabbitQueue) -> None:
    """Declare `queue` before anyone consumes it, so that what is published first waits there
    (a subscriber declares its own queue when it starts)."""
    await broker.declare_queue(queue)
