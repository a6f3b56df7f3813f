"""Build the order service: FastAPI (HTTP) and FastStream (RabbitMQ) in one process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from pymongo.errors import ConnectionFailure, PyMongoError
from starlette.datastructures import MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.order import api, handlers
from services.order.domain import OrderEvent
from services.order.handlers import OrderDeps, QuoteUnavailableError
from services.order.repository import (
    EventStore,
    IdempotencyKeys,
    OrderViews,
    stored_envelope,
    to_document,
)
from services.order.settings import OrderSettings
from shared import messaging, topology
from shared.contracts import Envelope, EventData, OrderLine, Quote, QuoteRequest
from shared.outbox import PENDING, OutboxRelay, outbox_stats
from shared.rpc import RpcClient, RpcUnavailableError
from shared.service import bootstrap, readiness, start_dependencies

log = structlog.get_logger(__name__)


# --8<-- [start:publish-stored-event]
def _publish_stored_event(broker: Any) -> Any:
    async def publish(doc: dict[str, Any]) -> None:
        await messaging.publish_event(broker, stored_envelope(doc))

    return publish
    # --8<-- [end:publish-stored-event]


# --8<-- [start:trace-id-middleware]
class TraceIdHeader:
    """ASGI middleware: adds ``X-Trace-Id`` (the request's trace) to every HTTP answer.

    A plain ASGI wrapper rather than ``@app.middleware("http")``: Starlette's
    ``BaseHTTPMiddleware`` runs each request through extra tasks and streams, a cost paid on
    every ``POST /orders``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_trace_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                context = trace.get_current_span().get_span_context()
                if context.is_valid:
                    headers = MutableHeaders(scope=message)
                    headers["X-Trace-Id"] = format(context.trace_id, "032x")
            await send(message)

        await self.app(scope, receive, send_with_trace_id)
        # --8<-- [end:trace-id-middleware]


def create_app(settings: OrderSettings | None = None) -> FastAPI:
    settings = settings or OrderSettings()
    runtime = bootstrap(settings)
    broker = runtime.broker
    store, views, keys = EventStore(runtime.db), OrderViews(runtime.db), IdempotencyKeys(runtime.db)
    relay = OutboxRelay(
        store.events,
        _publish_stored_event(broker),
        sweep_interval=settings.outbox_sweep_seconds,
        max_attempts=settings.outbox_max_attempts,
    )

    # --8<-- [start:ask-inventory]
    quotes = RpcClient(settings.rabbit_url, app_id=settings.service_name)

    async def ask_inventory(lines: tuple[OrderLine, ...]) -> Quote:
        request = QuoteRequest(lines=lines)
        try:
            reply = await quotes.request(
                topology.INVENTORY_QUOTES.name,
                request.model_dump(mode="json"),
                timeout=settings.quote_timeout_seconds,
            )
        except RpcUnavailableError as exc:
            raise QuoteUnavailableError(str(exc)) from exc
        return Quote.model_validate_json(reply)
        # --8<-- [end:ask-inventory]

    def wake_relay(events: Sequence[OrderEvent]) -> None:
        relay.wake([doc for doc in map(to_document, events) if doc["outbox"] == PENDING])

    deps = OrderDeps(
        store=store,
        views=views,
        keys=keys,
        quote=ask_inventory,
        wake_relay=wake_relay,
        saga_deadline_seconds=settings.saga_deadline_seconds,
    )

    # --8<-- [start:deadline-watch]
    async def watch_deadlines() -> None:
        while True:
            try:
                await handlers.expire_overdue_orders(deps)
            except Exception as exc:  # the database is away: try again next round
                log.warning("saga deadline sweep failed", error=repr(exc))
            await asyncio.sleep(settings.saga_sweep_seconds)
        # --8<-- [end:deadline-watch]

    async def on_saga_event(envelope: Envelope, payload: EventData) -> list[Envelope]:
        return await handlers.follow_saga(envelope, payload, deps)

    runtime.subscribe(topology.ORDER_SAGA_REPLIES, on_saga_event)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await start_dependencies(runtime)
        for repository in (store, views, keys):
            await repository.create_indexes()
        await broker.start()
        relay.start()
        relay.wake()  # sweep now: publish whatever a previous run left pending
        deadlines = asyncio.create_task(watch_deadlines(), name="saga-deadlines")
        try:
            yield
        finally:
            deadlines.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deadlines
            await relay.stop()
            await quotes.close()
            await broker.stop()
            await runtime.client.close()

    app = FastAPI(
        title="Warren — order service",
        description="Place orders and follow them through the saga. Everything after the 202 "
        "happens over RabbitMQ.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.deps = deps
    app.include_router(api.router)

    # --8<-- [start:database-unavailable]
    @app.exception_handler(PyMongoError)
    async def database_unavailable(request: Request, exc: PyMongoError) -> JSONResponse:
        """The database is away (a failover, a restart): a clear 503 to retry, not a 500.
        A client that retries with its Idempotency-Key gets one order, whatever happened."""
        if isinstance(exc, ConnectionFailure) or getattr(exc, "timeout", False):
            log.warning("database unavailable", path=request.url.path, error=repr(exc))
            advice = "retry with the same Idempotency-Key" if request.method == "POST" else "retry"
            return JSONResponse(
                {"detail": f"the database is not answering; {advice}"},
                status_code=503,
                headers={"Retry-After": "2"},
            )
        raise exc
        # --8<-- [end:database-unavailable]

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        responses={503: {"description": "The broker or the database does not answer"}},
    )
    async def readyz() -> JSONResponse:
        """Readiness: the broker and the database answer. The outbox is shown, not judged:
        parked events need an operator (``warren outbox``), not a restart."""
        status, body = await readiness(runtime)
        if body["database"]:
            body["outbox"] = await outbox_stats(store.events)
        return JSONResponse(body, status_code=status)

    @app.options("/{path:path}", include_in_schema=False, status_code=204)
    async def allowed_methods(path: str) -> Response:
        """OPTIONS names every method the path takes. (Starlette's default answers 405 with the
        methods of the first route that matches the path alone: POST for /orders.)"""
        methods = [
            method
            for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
            if any(
                route.matches({"type": "http", "path": f"/{path}", "method": method})[0]
                == Match.FULL
                for route in app.router.routes
            )
        ]
        if not methods:
            return Response(status_code=404)
        return Response(status_code=204, headers={"Allow": ", ".join([*methods, "OPTIONS"])})

    # --8<-- [start:trace-id-header]
    # Every answer names its trace: paste the X-Trace-Id into Jaeger's search box.
    app.add_middleware(TraceIdHeader)
    # No spans for health probes, nor for each ASGI send/receive (noise in every trace).
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,readyz", exclude_spans=["receive", "send"]
    )
    # --8<-- [end:trace-id-header]
    return app
