"""Wait for the broker and the database at start-up instead of crashing when they are late."""

from __future__ import annotations

import structlog
from faststream.rabbit import RabbitBroker
from pymongo import AsyncMongoClient
from tenacity import AsyncRetrying, before_sleep_log, stop_after_delay, wait_exponential

log = structlog.get_logger(__name__)

STARTUP_DEADLINE_SECONDS = 60


async def wait_for_dependencies(broker: RabbitBroker | None, client: AsyncMongoClient) -> None:
    """Connect to RabbitMQ and ping MongoDB, retrying with backoff for up to a minute."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(STARTUP_DEADLINE_SECONDS),
        wait=wait_exponential(multiplier=0.2, max=5),
        before_sleep=before_sleep_log(log, 30),  # type: ignore[arg-type]
        reraise=True,
    ):
        with attempt:
            await client.admin.command("ping")
            if broker is not None:
                await broker.connect()
