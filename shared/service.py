"""The runtime shell of a message-driven service: a FastStream app with health endpoints.

Inventory, payment and notification have no public HTTP API; each still serves
``GET /healthz`` (the process is up and its broker connection answers) and ``GET /readyz``
(broker *and* database reachable) so that compose and the local runner can wait for them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from faststream.asgi import AsgiFastStream, AsgiResponse, get, make_ping_asgi
from faststream.rabbit import RabbitBroker
from pymongo import AsyncMongoClient

from shared import mongo, topology
from shared.startup import wait_for_dependencies


def health_routes(broker: RabbitBroker, client: AsyncMongoClient) -> list[tuple[str, object]]:
    @get(include_in_schema=False)
    async def readyz(scope: object) -> AsgiResponse:
        checks = {"broker": await broker.ping(2.0), "database": await mongo.ping(client)}
        status = 200 if all(checks.values()) else 503
        body = json.dumps({"ready": status == 200, **checks}).encode()
        return AsgiResponse(body, status, headers={"content-type": "application/json"})

    return [
        ("/healthz", make_ping_asgi(broker, timeout=2.0, include_in_schema=False)),
        ("/readyz", readyz),
    ]


def make_service_app(
    broker: RabbitBroker,
    client: AsyncMongoClient,
    *,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    retry_delays: tuple[int, ...] | None = None,
) -> AsgiFastStream:
    """Connect, declare the topology, run ``on_startup`` (indexes...), then start consuming."""

    async def startup() -> None:
        await wait_for_dependencies(broker, client)
        await topology.declare_topology(broker, retry_delays)
        if on_startup is not None:
            await on_startup()

    async def shutdown() -> None:
        if on_shutdown is not None:
            await on_shutdown()
        await client.close()

    return AsgiFastStream(
        broker,
        asgi_routes=health_routes(broker, client),
        on_startup=[startup],
        after_shutdown=[shutdown],
        logger=logging.getLogger("faststream.app"),
    )
