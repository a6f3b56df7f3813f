"""Build the payment service: settings -> deps -> handler table -> app."""

from __future__ import annotations

from starlette.applications import Starlette

from services.payment.gateway import SimulatedGateway
from services.payment.handlers import HANDLERS, PaymentDeps
from services.payment.repository import PaymentRepository
from services.payment.settings import PaymentSettings
from shared.service import bootstrap, service_app


def create_app(settings: PaymentSettings | None = None) -> Starlette:
    settings = settings or PaymentSettings()
    runtime = bootstrap(settings)
    deps = PaymentDeps(
        payments=PaymentRepository(runtime.db),
        gateway=SimulatedGateway(
            runtime.db,
            decline_rate=settings.payment_decline_rate,
            latency_ms=settings.payment_latency_ms,
            error_rate=settings.payment_error_rate,
        ),
        token_keys=settings.token_keys(),
        processed_by=settings.instance_id,
    )
    runtime.serve(HANDLERS, deps)
    return service_app(runtime)
