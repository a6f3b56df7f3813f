"""Build the payment service: one competing consumer of ``payment.stock-reserved``."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.payment import handlers
from services.payment.gateway import SimulatedGateway
from services.payment.repository import PaymentRepository
from services.payment.settings import PaymentSettings
from shared import messaging, mongo, topology
from shared.contracts import Envelope, EventData, StockReserved
from shared.observability import setup_observability
from shared.service import make_service_app


def create_app(settings: PaymentSettings | None = None) -> AsgiFastStream:
    settings = settings or PaymentSettings()
    setup_observability(settings.service_name, level=settings.log_level, fmt=settings.log_format)
    client = mongo.make_client(settings)
    db = mongo.service_database(client, settings)
    repo = PaymentRepository(db)
    gateway = SimulatedGateway(
        db,
        decline_rate=settings.payment_decline_rate,
        latency_ms=settings.payment_latency_ms,
        error_rate=settings.payment_error_rate,
    )
    broker = messaging.make_broker(settings)

    async def on_stock_reserved(envelope: Envelope, payload: EventData) -> list[Envelope]:
        assert isinstance(payload, StockReserved)
        return await handlers.charge_reserved_order(
            envelope, payload, repo, gateway, processed_by=settings.instance_id
        )

    messaging.subscribe_events(
        broker,
        topology.PAYMENT_STOCK_RESERVED,
        on_stock_reserved,
        retry_delays=settings.retry_delays_seconds,
    )
    return make_service_app(broker, client, retry_delays=settings.retry_delays_seconds)
