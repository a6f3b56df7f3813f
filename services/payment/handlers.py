"""Payment's business functions, and its handler table.

``stock.reserved`` in, ``payment.succeeded`` or ``payment.failed`` out; ``order.cancelled`` in,
a refund (or the promise never to charge) and nothing out. :mod:`services.payment.domain`
decides; these read, call the gateway, and write.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.payment.domain import Payment, PaymentStatus, must_refund_after_charge, outcome
from services.payment.gateway import SimulatedGateway
from services.payment.repository import PaymentRepository
from shared import topology
from shared.contracts import Envelope, OrderCancelled, StockReserved
from shared.handlers import HandlerTable

SOURCE = "payment"


@dataclass
class PaymentDeps:
    payments: PaymentRepository
    gateway: SimulatedGateway
    # Which replica charged an order: recorded with the payment, to see competing consumers.
    processed_by: str = ""


# --8<-- [start:charge]
async def charge_reserved_order(
    envelope: Envelope, reserved: StockReserved, deps: PaymentDeps
) -> list[Envelope]:
    """Charge once per order. A redelivery re-announces the recorded outcome (same event id)."""
    recorded = await deps.payments.get(reserved.order_id)
    if recorded is not None:
        return _announce(recorded)

    # The order id is the idempotency key -- one payment per order: a crash after charging and
    # before recording gets the same charge back on the next attempt, not a second one.
    result = await deps.gateway.charge(
        reserved.order_id,
        reserved.amount_cents,
        reserved.payment_token,
        idempotency_key=reserved.order_id,
    )
    data = outcome(
        reserved, succeeded=result.succeeded, charge_id=result.charge_id, reason=result.reason
    )
    event = Envelope.wrap(data, source=SOURCE, causation=envelope)
    stands = await deps.payments.record_outcome(
        reserved.order_id,
        status=PaymentStatus.PAID if result.succeeded else PaymentStatus.DECLINED,
        charge_id=result.charge_id,
        amount_cents=reserved.amount_cents if result.succeeded else 0,
        processed_by=deps.processed_by,
        outcome_event=event.model_dump(mode="json"),
    )
    if must_refund_after_charge(stands, result.succeeded):
        # The order was cancelled while we charged it: the money goes back at once.
        await _refund(reserved.order_id, deps)
    return _announce(stands)
    # --8<-- [end:charge]


def _announce(recorded: Payment) -> list[Envelope]:
    """The outcome to (re-)announce, with its first id; a cancelled order's is nobody's news."""
    event = recorded.outcome_event
    return [Envelope.model_validate(event)] if event else []


# --8<-- [start:compensate]
async def refund_cancelled_order(
    envelope: Envelope, cancelled: OrderCancelled, deps: PaymentDeps
) -> list[Envelope]:
    """The order was cancelled: refund it if it was charged, and make sure it never will be.

    Most cancellations come after a declined card or missing stock (nothing to do). One that
    comes from the saga deadline may find the order charged -- the payment went through but
    the order never heard of it -- or not charged yet: then a cancelled outcome is recorded
    first, so a ``stock.reserved`` that is still being retried finds it and charges nothing.
    """
    stands = await deps.payments.record_outcome(cancelled.order_id, status=PaymentStatus.CANCELLED)
    if stands.charged:
        await _refund(cancelled.order_id, deps)
    return []
    # --8<-- [end:compensate]


async def _refund(order_id: str, deps: PaymentDeps) -> None:
    await deps.gateway.refund(idempotency_key=order_id)  # once, however often we ask
    await deps.payments.mark_refunded(order_id)


# --8<-- [start:handler-table]
HANDLERS: HandlerTable[PaymentDeps] = {
    topology.PAYMENT_STOCK_RESERVED: {StockReserved: charge_reserved_order},
    topology.PAYMENT_ORDER_CANCELLED: {OrderCancelled: refund_cancelled_order},
}
# --8<-- [end:handler-table]
