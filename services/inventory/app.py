"""Build the inventory service: broker, subscriptions, repository, health endpoints."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream
from faststream.rabbit import RabbitResponse

from services.inventory import handlers
from services.inventory.repository import StockRepository
from services.inventory.settings import InventorySettings
from shared import messaging, mongo, topology
from shared.contracts import Envelope, EventData, PaymentFailed, PaymentSucceeded, QuoteRequest
from shared.observability import setup_observability
from shared.service import make_service_app


def create_app(settings: InventorySettings | None = None) -> AsgiFastStream:
    settings = settings or InventorySettings()
    setup_observability(settings.service_name, level=settings.log_level, fmt=settings.log_format)
    client = mongo.make_client(settings)
    repo = StockRepository(mongo.service_database(client, settings))
    broker = messaging.make_broker(settings)

    # --8<-- [start:answer-quote]
    # Request-reply: FastStream sends the return value to the caller's reply-to queue.
    @broker.subscriber(topology.INVENTORY_QUOTES)
    async def answer_quote(request: QuoteRequest) -> RabbitResponse:
        # Not mandatory: RabbitMQ 3.10 answers a mandatory publish to a direct reply-to
        # pseudo-queue with NO_ROUTE even though it delivers it.
        return RabbitResponse(await handlers.quote(request, repo), mandatory=False)
        # --8<-- [end:answer-quote]

    async def on_order_placed(envelope: Envelope, payload: EventData) -> list[Envelope]:
        return await handlers.reserve_stock(envelope, payload, repo)  # type: ignore[arg-type]

    async def on_payment_outcome(envelope: Envelope, payload: EventData) -> list[Envelope]:
        assert isinstance(payload, PaymentSucceeded | PaymentFailed)
        return await handlers.settle_reservation(envelope, payload, repo)

    messaging.subscribe_events(
        broker,
        topology.INVENTORY_ORDER_PLACED,
        on_order_placed,
        retry_delays=settings.retry_delays_seconds,
    )
    messaging.subscribe_events(
        broker,
        topology.INVENTORY_PAYMENT_OUTCOMES,
        on_payment_outcome,
        retry_delays=settings.retry_delays_seconds,
    )

    return make_service_app(
        broker, client, retry_delays=settings.retry_delays_seconds, on_startup=repo.create_indexes
    )
