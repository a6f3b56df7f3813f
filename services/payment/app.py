"""Build the payment service: one competing consumer of ``payment.stock-reserved``."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.payment import handlers
from services.payment.gateway import SimulatedGateway
from services.payment.repository import PaymentRepository
from services.payment.settings import PaymentSettings
from shared import topology
from shared.contracts import Envelope, EventData, OrderCancelled, StockReserved
from shared.service import bootstrap, make_service_app


def create_app(settings: PaymentSettings | None = None) -> AsgiFastStream:
    settings = settings or PaymentSettings()
    runtime = bootstrap(settings)
    repo = PaymentRepository(runtime.db)
    gateway = SimulatedGateway(
        runtime.db,
        decline_rate=settings.payment_decline_rate,
        latency_ms=settings.payment_latency_ms,
        error_rate=settings.payment_error_rate,
    )

    async def on_stock_reserved(envelope: Envelope, payload: EventData) -> list[Envelope]:
        assert isinstance(payload, StockReserved)
        return await handlers.charge_reserved_order(
            envelope, payload, repo, gateway, processed_by=settings.instance_id
        )

    async def on_order_cancelled(envelope: Envelope, payload: EventData) -> list[Envelope]:
        assert isinstance(payload, OrderCancelled)
        return await handlers.refund_cancelled_order(payload, repo, gateway)

    runtime.subscribe(topology.PAYMENT_STOCK_RESERVED, on_stock_reserved)
    runtime.subscribe(topology.PAYMENT_ORDER_CANCELLED, on_order_cancelled)
    return make_service_app(runtime)
