"""The shape every service shares: settings -> runtime -> deps -> handler table -> app.

:func:`bootstrap` turns a service's settings into its :class:`Runtime`: logging and tracing
set up, one MongoDB client, the service's own database, the broker. :meth:`Runtime.serve`
subscribes the service's handler table. :func:`lifespan` is the one start-up and shut-down
sequence, for the order service's FastAPI app and for the others' health-only apps alike:

1. wait for the broker and the database, declare the queues (idempotent: an operator declares
   the whole topology, a service with a broker user of its own only its own queues);
2. the service's own start-up hooks (indexes, clock sync...);
3. start consuming, then the background loops (sweepers, the outbox relay);
4. on the way out, the reverse: loops cancelled, broker drained (the handlers in flight
   finish), the service's shut-down hooks, database closed.

Every service answers the same two health questions, whatever its framework:

* ``GET /healthz`` (liveness) -- the process answers, and so does its broker connection;
* ``GET /readyz`` (readiness) -- the broker *and* the database answer (503 if not), plus the
  details a service adds (the order service shows its outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from faststream.rabbit import RabbitBroker
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared import mongo, topology
from shared.handlers import HandlerTable, bind
from shared.messaging import Identity, make_broker, subscribe_events
from shared.metrics import metrics_endpoint
from shared.observability import setup_observability
from shared.settings import WarrenSettings
from shared.startup import wait_for_dependencies

log = structlog.get_logger(__name__)

Hook = Callable[[], Awaitable[Any]]
Loop = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Runtime:
    settings: WarrenSettings
    client: AsyncMongoClient
    db: AsyncDatabase
    broker: RabbitBroker
    # Background loops that ended with an error: the service is broken, and /healthz says so.
    failures: list[str] = field(default_factory=list)

    @property
    def identity(self) -> Identity | None:
        """Who this service is on the broker -- None when it connects as an operator (a broker
        without per-service users): then it cannot tell who published what."""
        user = self.settings.broker_user
        if user in self.settings.broker_operators:
            return None
        return Identity(user=user, operators=self.settings.broker_operators)

    def serve(self, table: HandlerTable[Any], deps: Any) -> None:
        """Consume every queue of the service's handler table, with Warren's delivery rules;
        with a broker user of its own, events from anyone but their one publisher are refused."""
        for queue, routes in bind(table, deps).items():
            subscribe_events(
                self.broker,
                queue,
                routes,
                retry_delays=self.settings.retry_delays_seconds,
                identity=self.identity,
            )

    async def declare_queues(self) -> None:
        """An operator declares the whole topology (idempotent); a service with a user of its
        own may declare its own queues only: the rest was provisioned."""
        delays = self.settings.retry_delays_seconds
        access = topology.access_of(self.settings.broker_user)
        if self.identity is None or access is None:
            log.warning(
                "connected as an operator: declaring the whole topology; publishers of events "
                "are not verified (give each service a broker user: warren topology provision)",
                user=self.settings.broker_user,
            )
            await topology.declare_topology(self.broker, delays)
        else:
            await topology.declare_own_queues(self.broker, access, delays)


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
    background: list[Loop] = field(default_factory=list)  # loops that run until shut-down
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
        await runtime.declare_queues()
        for hook in hooks.on_startup:
            await hook()
        await runtime.broker.start()
        loops = [_start_loop(runtime, loop) for loop in hooks.background]
        try:
            yield
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await runtime.broker.stop()  # lets the handlers in flight finish (graceful_timeout)
            for hook in hooks.on_shutdown:  # after the handlers: they may still need these
                await hook()
            await runtime.client.close()

    return run
    # --8<-- [end:lifespan]


def _start_loop(runtime: Runtime, loop: Loop) -> asyncio.Task[None]:
    """Run ``loop`` until shut-down. One that ends with an error (each loop catches what it
    expects, so this is a bug) is logged and fails ``/healthz``: never a silent dead relay."""
    name = getattr(loop, "__name__", None) or getattr(
        getattr(loop, "func", None), "__name__", "loop"
    )
    task = asyncio.create_task(loop(), name=name)

    def ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            failure = f"background loop {name} died: {task.exception()!r}"
            log.error(failure)
            runtime.failures.append(failure)

    task.add_done_callback(ended)
    return task


# --8<-- [start:health]
async def liveness(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    """The ``/healthz`` answer: 200 while the broker connection answers and no background loop
    has died, else 503 with the reason."""
    if runtime.failures:
        return 503, {"status": "; ".join(runtime.failures)}
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
    """The app of a service without a public API: its lifespan, the two health checks and its
    metrics (``/metrics``, for Prometheus)."""

    async def healthz(_: Request) -> JSONResponse:
        status, body = await liveness(runtime)
        return JSONResponse(body, status_code=status)

    async def readyz(_: Request) -> JSONResponse:
        status, body = await readiness(runtime)
        return JSONResponse(body, status_code=status)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ],
        lifespan=lifespan(runtime, lifecycle),
    )
