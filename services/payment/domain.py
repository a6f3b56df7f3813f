"""Payment's rules. Pure: no I/O -- the handlers read and write, these decide.

A **payment** is payment's record of one order, keyed by order id, written once (the first
outcome stands). Its states:

=============  ===================================================================
``paid``       the gateway captured the amount
``declined``   the gateway declined the card (final)
``cancelled``  the order was cancelled before it was charged: it never will be (final)
``refunded``   paid, then the order was cancelled: the money went back (final)
=============  ===================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.contracts import PaymentFailed, PaymentSucceeded, StockReserved


class PaymentStatus(StrEnum):
    PAID = "paid"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


@dataclass(frozen=True)
class Payment:
    """One order's payment as stored (a value object)."""

    order_id: str
    status: PaymentStatus
    charge_id: str = ""
    amount_cents: int = 0
    outcome_event: Mapping[str, Any] | None = None  # payment.succeeded / payment.failed

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Payment:
        return cls(
            order_id=doc["_id"],
            status=PaymentStatus(doc["status"]),
            charge_id=doc.get("charge_id", ""),
            amount_cents=doc.get("amount_cents", 0),
            outcome_event=doc.get("outcome_event"),
        )

    @property
    def charged(self) -> bool:
        """Money moved for this order (and may have to go back)."""
        return self.status in (PaymentStatus.PAID, PaymentStatus.REFUNDED)


def outcome(
    reserved: StockReserved, *, succeeded: bool, charge_id: str, reason: str
) -> PaymentSucceeded | PaymentFailed:
    """What the gateway's answer means for the saga."""
    if succeeded:
        return PaymentSucceeded(
            order_id=reserved.order_id, payment_id=charge_id, amount_cents=reserved.amount_cents
        )
    return PaymentFailed(order_id=reserved.order_id, reason=reason)


def must_refund_after_charge(stands: Payment, charge_succeeded: bool) -> bool:
    """We charged, but a cancellation was recorded first: the money goes back at once."""
    return charge_succeeded and stands.status == PaymentStatus.CANCELLED
