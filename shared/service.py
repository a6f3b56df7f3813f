"""The shape every service shares: settings -> runtime -> deps -> handler table -> app.

:func:`bootstrap` turns a service's settings into its :class:`Runtime`: logging and tracing
set up, one MongoDB client, the service's own database, the broker. :meth:`Runtime.serve`
subscribes the service's handler table. :func:`lifespan` is the one start-up and shut-down
sequence, for the order service's FastAPI app and for the others' health-only apps alike:

1. wait for the broker and the database, declare the topology (idempotent);
2. the service's own start-up hooks (indexes, clock sync...);
3. start consuming, then the background loops (sweepers, the outbox relay);
4. on the way out, the reverse: loops cancelled, hooks, broker drained, database closed.

Every service answers the same two health questions, whatever its framework:

* ``GET /healthz`` (liveness) -- the process answers, and so does its broker connection;
* ``GET /readyz`` (readiness) -- the broker *and* the database answer (503 if not), plus the
  details a service adds (the order service shows its outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from faststream.rabbit import RabbitBroker
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared import mongo, topology
from shared.handlers import HandlerTable, bind
from shared.messaging import make_broker, subscribe_events
from shared.observability import setup_observability
from shared.settings import WarrenSettings
from shared.startup import wait_for_dependencies

Hook = Callable[[], Awaitable[Any]]


@dataclass
class Runtime:
    settings: WarrenSettings
    client: AsyncMongoClient
    db: AsyncDatabase
    broker: RabbitBroker

    def serve(self, table: HandlerTable[Any], deps: Any) -> None:
        """Consume every queue of the service's handler table, with Warren's delivery rules."""
        for queue, routes in bind(table, deps).items():
            subscribe_events(
                self.broker, queue, routes, retry_delays=self.settings.retry_delays_seconds
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


@dataclass
class Lifecycle:
    """What a service adds to the shared start-up and shut-down."""

    on_startup: list[Hook] = field(default_factory=list)  # before consuming (indexes...)
    background: list[Hook] = field(default_factory=list)  # loops that run until shut-down
    on_shutdown: list[Hook] = field(default_factory=list)  # after the loops stopped


# --8<-- [start:lifespan]
def lifespan(
    runtime: Runtime, lifecycle: Lifecycle | None = None
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """The ASGI lifespan of every service (FastAPI's and Starlette's ``lifespan=``)."""
    hooks = lifecycle or Lifecycle()

    @contextlib.asynccontextmanager
    async def run(_: Any) -> AsyncIterator[None]:
        await wait_for_dependencies(runtime.broker, runtime.client)
        await topology.declare_topology(runtime.broker, runtime.settings.retry_delays_seconds)
        for hook in hooks.on_startup:
            await hook()
        await runtime.broker.start()
        loops = [
            asyncio.create_task(loop(), name=getattr(loop, "__name__", "loop"))
            for loop in hooks.background
        ]
        try:
            yield
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            for hook in hooks.on_shutdown:
                await hook()
            await runtime.broker.stop()  # lets the handlers in flight finish (graceful_timeout)
            await runtime.client.close()

    return run
    # --8<-- [end:lifespan]


# --8<-- [start:health]
async def liveness(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    """The ``/healthz`` answer: 200 while the broker connection answers, else 503."""
    alive = await runtime.broker.ping(2.0)
    return (200 if alive else 503), {"status": "ok" if alive else "broker connection lost"}


async def readiness(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    """The ``/readyz`` answer: 200 when the broker and the database both answer, else 503."""
    checks = {
        "broker": await runtime.broker.ping(2.0),
        "database": await mongo.ping(runtime.client),
    }
    ready = all(checks.values())
    return (200 if ready else 503), {"ready": ready, **checks}
    # --8<-- [end:health]


def service_app(runtime: Runtime, lifecycle: Lifecycle | None = None) -> Starlette:
    """The app of a service without a public API: its lifespan, and the two health checks."""

    async def healthz(_: Request) -> JSONResponse:
        status, body = await liveness(runtime)
        return JSONResponse(body, status_code=status)

    async def readyz(_: Request) -> JSONResponse:
        status, body = await readiness(runtime)
        return JSONResponse(body, status_code=status)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz)],
        lifespan=lifespan(runtime, lifecycle),
    )
