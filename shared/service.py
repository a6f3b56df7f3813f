"""What every service starts with, and the runtime shell of a message-driven service.

:func:`bootstrap` turns a service's settings into its :class:`Runtime`: logging and tracing
set up, one MongoDB client, the service's own database, the broker. Each ``app.py`` starts
with it, then wires its repositories and handlers.

Inventory, payment and notification have no public HTTP API; each still serves
``GET /healthz`` (the process is up and its broker connection answers) and ``GET /readyz``
(broker *and* database reachable) so that compose and the local runner can wait for them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from faststream.asgi import AsgiFastStream, AsgiResponse, get, make_ping_asgi
from faststream.rabbit import RabbitBroker
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from shared import mongo, topology
from shared.messaging import EventHandler, make_broker, subscribe_events
from shared.observability import setup_observability
from shared.settings import WarrenSettings
from shared.startup import wait_for_dependencies


@dataclass
class Runtime:
    settings: WarrenSettings
    client: AsyncMongoClient
    db: AsyncDatabase
    broker: RabbitBroker

    def subscribe(self, consumer_queue: topology.ConsumerQueue, handler: EventHandler) -> None:
        """Consume ``consumer_queue`` with Warren's delivery rules and this service's backoff."""
        subscribe_events(
            self.broker, consumer_queue, handler, retry_delays=self.settings.retry_delays_seconds
        )


def bootstrap(settings: WarrenSettings) -> Runtime:
    """Observability first (so everything after it is logged and traced), then the clients."""
    setup_observability(settings.service_name, level=settings.log_level, fmt=settings.log_format)
    client = mongo.make_client(settings)
    return Runtime(
        settings=settings,
        client=client,
        db=mongo.service_database(client, settings),
        broker=make_broker(settings),
    )


async def start_dependencies(runtime: Runtime) -> None:
    """Wait for the broker and the database, then declare the topology (idempotent)."""
    await wait_for_dependencies(runtime.broker, runtime.client)
    await topology.declare_topology(runtime.broker, runtime.settings.retry_delays_seconds)


async def readiness(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    """The ``/readyz`` answer: 200 when the broker and the database both answer, else 503."""
    checks = {
        "broker": await runtime.broker.ping(2.0),
        "database": await mongo.ping(runtime.client),
    }
    ready = all(checks.values())
    return (200 if ready else 503), {"ready": ready, **checks}


def health_routes(runtime: Runtime) -> list[tuple[str, object]]:
    @get(include_in_schema=False)
    async def readyz(scope: object) -> AsgiResponse:
        status, body = await readiness(runtime)
        return AsgiResponse(
            json.dumps(body).encode(), status, headers={"content-type": "application/json"}
        )

    return [
        ("/healthz", make_ping_asgi(runtime.broker, timeout=2.0, include_in_schema=False)),
        ("/readyz", readyz),
    ]


def make_service_app(
    runtime: Runtime,
    *,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> AsgiFastStream:
    """Connect, declare the topology, run ``on_startup`` (indexes...), then start consuming."""

    async def startup() -> None:
        await start_dependencies(runtime)
        if on_startup is not None:
            await on_startup()

    async def shutdown() -> None:
        if on_shutdown is not None:
            await on_shutdown()
        await runtime.client.close()

    return AsgiFastStream(
        runtime.broker,
        asgi_routes=health_routes(runtime),
        on_startup=[startup],
        after_shutdown=[shutdown],
        logger=logging.getLogger("faststream.app"),
    )
