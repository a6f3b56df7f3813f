"""Build the inventory service: broker, subscriptions, repository, health endpoints."""

from __future__ import annotations

import structlog
from faststream.asgi import AsgiFastStream
from faststream.rabbit import RabbitResponse
from faststream.rabbit.annotations import RabbitMessage

from services.inventory import handlers
from services.inventory.repository import StockRepository
from services.inventory.settings import InventorySettings
from shared import topology
from shared.clock import DatabaseClock
from shared.contracts import (
    Envelope,
    EventData,
    OrderCancelled,
    PaymentFailed,
    PaymentSucceeded,
    QuoteRequest,
)
from shared.messaging import dead_letter, undecoded
from shared.service import bootstrap, make_service_app

log = structlog.get_logger(__name__)


def create_app(settings: InventorySettings | None = None) -> AsgiFastStream:
    settings = settings or InventorySettings()
    runtime = bootstrap(settings)
    clock = DatabaseClock()
    repo = StockRepository(runtime.db, lease_seconds=settings.decision_lease_seconds, clock=clock)

    # --8<-- [start:answer-quote]
    # Request-reply: FastStream sends the return value to the caller's reply-to queue.
    @runtime.broker.subscriber(topology.INVENTORY_QUOTES.queue, decoder=undecoded)
    async def answer_quote(body: bytes, message: RabbitMessage) -> RabbitResponse:
        try:
            request = QuoteRequest.model_validate_json(message.body)
        except ValueError as exc:
            # The caller (if any) gets the reason at once rather than a timeout; a copy goes
            # to inventory.quotes.dlq so that the bad request is seen, not just logged.
            reason = f"poison: {' | '.join(str(exc).splitlines())[:500]}"
            log.warning("poison quote request", reason=reason)
            await dead_letter(
                runtime.broker,
                message,
                topology.INVENTORY_QUOTES.name,
                reason=reason,
                exception=exc,
                attempts=1,
            )
            return RabbitResponse({"error": reason}, mandatory=False)
        # Not mandatory: RabbitMQ 3.10 answers a mandatory publish to a direct reply-to
        # pseudo-queue with NO_ROUTE even though it delivers it.
        return RabbitResponse(await handlers.quote(request, repo), mandatory=False)
        # --8<-- [end:answer-quote]

    async def on_order_placed(envelope: Envelope, payload: EventData) -> list[Envelope]:
        return await handlers.reserve_stock(envelope, payload, repo)  # type: ignore[arg-type]

    async def on_settlement(envelope: Envelope, payload: EventData) -> list[Envelope]:
        assert isinstance(payload, PaymentSucceeded | PaymentFailed | OrderCancelled)
        return await handlers.settle_reservation(envelope, payload, repo)

    runtime.subscribe(topology.INVENTORY_ORDER_PLACED, on_order_placed)
    runtime.subscribe(topology.INVENTORY_PAYMENT_OUTCOMES, on_settlement)
    runtime.subscribe(topology.INVENTORY_ORDER_CANCELLED, on_settlement)

    async def sync_clock() -> None:
        await clock.sync(runtime.client)  # leases on the database's clock

    return make_service_app(runtime, on_startup=sync_clock)
