"""Payment's business function: a reserved order in, ``payment.succeeded`` or ``payment.failed`` out."""

from __future__ import annotations

from typing import Any

from services.payment.gateway import SimulatedGateway
from services.payment.repository import PaymentRepository
from shared.contracts import (
    Envelope,
    OrderCancelled,
    PaymentFailed,
    PaymentSucceeded,
    StockReserved,
)

SOURCE = "payment"
# A payment's status: paid or declined by the gateway; cancelled (the order was cancelled
# before it was charged: it never will be); refunded (paid, then the order was cancelled).
PAID, DECLINED, CANCELLED, REFUNDED = "paid", "declined", "cancelled", "refunded"


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
        return _announce(recorded)

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
            "status": PAID if result.succeeded else DECLINED,
            "charge_id": result.charge_id,
            "amount_cents": reserved.amount_cents if result.succeeded else 0,
            "processed_by": processed_by,
            "outcome_event": event.model_dump(mode="json"),
        },
    )
    if recorded["status"] == CANCELLED and result.succeeded:
        # The order was cancelled while we charged it: the money goes back at once.
        await _refund(reserved.order_id, repo, gateway)
    return _announce(recorded)
    # --8<-- [end:charge]


def _announce(recorded: dict[str, Any]) -> list[Envelope]:
    """The outcome to (re-)announce, with its first id; a cancelled order's is nobody's news."""
    event = recorded.get("outcome_event")
    return [Envelope.model_validate(event)] if event else []


# --8<-- [start:compensate]
async def refund_cancelled_order(
    cancelled: OrderCancelled, repo: PaymentRepository, gateway: SimulatedGateway
) -> list[Envelope]:
    """The order was cancelled: refund it if it was charged, and make sure it never will be.

    Most cancellations come after a declined card or missing stock (nothing to do). One that
    comes from the saga deadline may find the order charged -- the payment went through but
    the order never heard of it -- or not charged yet: then a cancelled outcome is recorded
    first, so a ``stock.reserved`` that is still being retried finds it and charges nothing.
    """
    recorded = await repo.record_outcome(
        cancelled.order_id,
        {"status": CANCELLED, "charge_id": "", "amount_cents": 0, "outcome_event": None},
    )
    if recorded["status"] in (PAID, REFUNDED):
        await _refund(cancelled.order_id, repo, gateway)
    return []
    # --8<-- [end:compensate]


async def _refund(order_id: str, repo: PaymentRepository, gateway: SimulatedGateway) -> None:
    await gateway.refund(idempotency_key=order_id)  # once, however often we ask
    await repo.mark_refunded(order_id)
