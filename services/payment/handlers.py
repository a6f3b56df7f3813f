"""Payment's business function: a reserved order in, ``payment.succeeded`` or ``payment.failed`` out."""

from __future__ import annotations

from services.payment.gateway import SimulatedGateway
from services.payment.repository import PaymentRepository
from shared.contracts import Envelope, PaymentFailed, PaymentSucceeded, StockReserved

SOURCE = "payment"


# --8<-- [start:charge]
async def charge_reserved_order(
    envelope: Envelope,
    reserved: StockReserved,
    repo: PaymentRepository,
    gateway: SimulatedGateway,
    *,
    processed_by: str = "",
) -> list[Envelope]:
    """Charge once per order. A redelivery re-announces the recorded outcome (same event id)."""
    recorded = await repo.get(reserved.order_id)
    if recorded is not None:
        return [Envelope.model_validate(recorded["outcome_event"])]

    # The order id is the idempotency key -- one payment per order: a crash after charging and
    # before recording gets the same charge back on the next attempt, not a second one.
    result = await gateway.charge(
        reserved.order_id,
        reserved.amount_cents,
        reserved.payment_token,
        idempotency_key=reserved.order_id,
    )
    data: PaymentSucceeded | PaymentFailed = (
        PaymentSucceeded(
            order_id=reserved.order_id,
            payment_id=result.charge_id,
            amount_cents=reserved.amount_cents,
        )
        if result.succeeded
        else PaymentFailed(order_id=reserved.order_id, reason=result.reason)
    )
    event = Envelope.wrap(data, source=SOURCE, causation=envelope)
    recorded = await repo.record_outcome(
        reserved.order_id,
        {
            "status": "paid" if result.succeeded else "declined",
            "charge_id": result.charge_id,
            "amount_cents": reserved.amount_cents if result.succeeded else 0,
            "processed_by": processed_by,
            "outcome_event": event.model_dump(mode="json"),
        },
    )
    return [Envelope.model_validate(recorded["outcome_event"])]
    # --8<-- [end:charge]
