"""Payment's business functions, and its handler table.

``stock.reserved`` in, ``payment.succeeded`` or ``payment.failed`` out; ``order.cancelled`` in,
a refund (or the promise never to charge) and nothing out. :mod:`services.payment.domain`
decides; these read, call the gateway, and write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.payment.domain import Payment, PaymentStatus, must_refund_after_charge, outcome
from services.payment.gateway import ChargeResult, SimulatedGateway
from services.payment.repository import PaymentRepository
from shared import topology
from shared.contracts import Envelope, OrderCancelled, StockReserved
from shared.handlers import HandlerTable
from shared.messaging import handled_before
from shared.sealing import SealingError, UnknownKeyError, unseal

SOURCE = "payment"
UNREADABLE_TOKEN = "payment details could not be read"
log = structlog.get_logger(__name__)


@dataclass
class PaymentDeps:
    payments: PaymentRepository
    gateway: SimulatedGateway
    # Key id -> private key: they open the sealed payment tokens (only payment holds them).
    token_keys: Mapping[str, X25519PrivateKey]
    # Which replica charged an order: recorded with the payment, to see competing consumers.
    processed_by: str = ""


# --8<-- [start:charge]
async def charge_reserved_order(
    envelope: Envelope, reserved: StockReserved, deps: PaymentDeps
) -> list[Envelope]:
    """Charge once per order. A redelivery re-announces the recorded outcome (same event id)."""
    recorded = await deps.payments.get(reserved.order_id)
    if recorded is not None:
        handled_before()  # charged (or declined) before: counted as a duplicate skipped
        return _announce(recorded)

    token = open_payment_token(reserved, deps)
    if token is None:  # altered, or sealed for another order: never sent to the gateway
        result = ChargeResult(succeeded=False, charge_id="", reason=UNREADABLE_TOKEN)
    else:
        # The order id is the idempotency key -- one payment per order: a crash after charging
        # and before recording gets the same charge back on the next attempt, not a second one.
        result = await deps.gateway.charge(
            reserved.order_id, reserved.amount_cents, token, idempotency_key=reserved.order_id
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


# --8<-- [start:open-token]
def open_payment_token(reserved: StockReserved, deps: PaymentDeps) -> str | None:
    """The clear payment token, or None when it does not open (a decline, not a retry).

    It opens only with the key it was sealed for, and only for the order it was sealed for.
    A key this replica does not hold raises :class:`UnknownKeyError`: the message is retried
    (and, when the retries run out, kept in the DLQ), so installing the key and replaying it
    charges the order -- a rotation done in the wrong order loses nothing.
    """
    try:
        return unseal(deps.token_keys, reserved.sealed_payment_token, aad=reserved.order_id)
    except UnknownKeyError:
        raise
    except SealingError as exc:
        log.warning("payment token does not open: declined", reason=str(exc))
        return None
    # --8<-- [end:open-token]


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
