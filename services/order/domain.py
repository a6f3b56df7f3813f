"""The order aggregate, event-sourced: its state is the fold of its events. Pure, no I/O.

The order's own stream holds these events (``version`` 1, 2, ...):

==========================  =========  ========================================
type                        published  meaning
==========================  =========  ========================================
``order.placed``            yes        accepted by the API
``order.stock-reserved``    no         inventory reserved every line
``order.payment-failed``    no         payment declined; waiting for the release
``order.confirmed``         yes        paid: final
``order.cancelled``         yes        rejected or compensated: final
==========================  =========  ========================================

:func:`react` decides what a saga event means for the order. It is a state machine with
guards, so a duplicate or late event changes nothing, and events arriving out of order still
end in the right final state (``payment.succeeded`` before ``stock.reserved`` confirms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.contracts import (
    EventData,
    OrderCancelled,
    OrderConfirmed,
    PaymentFailed,
    PaymentSucceeded,
    StockRejected,
    StockReleased,
    StockReserved,
)


class OrderStatus(StrEnum):
    PENDING = "PENDING"  # placed, waiting for inventory
    RESERVED = "RESERVED"  # stock held, waiting for payment
    CANCELLING = "CANCELLING"  # payment failed, waiting for inventory to release the stock
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


FINAL_STATUSES = frozenset({OrderStatus.CONFIRMED, OrderStatus.CANCELLED})

# The order's events that other services hear about; the others stay in the order's stream.
PUBLISHED_TYPES = frozenset({"order.placed", "order.confirmed", "order.cancelled"})


@dataclass(frozen=True)
class OrderEvent:
    """One event of an order's stream, as stored."""

    id: str
    order_id: str
    version: int
    type: str
    data: dict[str, Any]
    occurred_at: datetime
    causation_id: str | None = None
    # The trace it was recorded in (W3C headers): its publication continues that trace.
    trace_context: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class NewEvent:
    """An event the aggregate decided to append (the store gives it an id and a version)."""

    type: str
    data: dict[str, Any]

    @classmethod
    def of(cls, data: EventData) -> NewEvent:
        return cls(type=data.TYPE, data=data.model_dump(mode="json"))


@dataclass
class Order:
    id: str
    customer_id: str = ""
    lines: list[dict[str, Any]] = field(default_factory=list)
    total_cents: int = 0
    currency: str = "EUR"
    status: OrderStatus = OrderStatus.PENDING
    version: int = 0
    cancel_reason: str | None = None
    payment_failure: str | None = None
    placed_at: datetime | None = None
    updated_at: datetime | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    # --8<-- [start:fold]
    @classmethod
    def from_events(cls, order_id: str, events: list[OrderEvent]) -> Order:
        order = cls(id=order_id)
        for event in sorted(events, key=lambda e: e.version):
            order.apply(event)
        return order

    def apply(self, event: OrderEvent) -> None:
        data = event.data
        match event.type:
            case "order.placed":
                self.customer_id = data["customer_id"]
                self.lines = list(data["lines"])
                self.total_cents = data["total_cents"]
                self.currency = data.get("currency", "EUR")
                self.status = OrderStatus.PENDING
                self.placed_at = event.occurred_at
            case "order.stock-reserved":
                self.status = OrderStatus.RESERVED
            case "order.payment-failed":
                self.status = OrderStatus.CANCELLING
                self.payment_failure = data.get("reason")
            case "order.confirmed":
                self.status = OrderStatus.CONFIRMED
            case "order.cancelled":
                self.status = OrderStatus.CANCELLED
                self.cancel_reason = data.get("reason")
        self.version = event.version
        self.updated_at = event.occurred_at
        self.history.append(
            {"version": event.version, "type": event.type, "occurred_at": event.occurred_at}
        )
        # --8<-- [end:fold]

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


# --8<-- [start:react]
def react(order: Order, incoming: EventData) -> list[NewEvent]:
    """What a saga event means for this order: the events to append (often none)."""
    if order.version == 0 or order.is_final:
        return []  # unknown order, or already decided: duplicates and late arrivals end here

    cancelled = lambda reason: NewEvent.of(  # noqa: E731
        OrderCancelled(order_id=order.id, customer_id=order.customer_id, reason=reason)
    )
    match incoming:
        case StockReserved() if order.status == OrderStatus.PENDING:
            return [NewEvent(type="order.stock-reserved", data={"order_id": order.id})]
        case StockRejected(reason=reason):
            if order.status == OrderStatus.PENDING:
                return [cancelled(f"stock rejected: {reason}")]
        case PaymentSucceeded():
            if order.status in (OrderStatus.PENDING, OrderStatus.RESERVED):
                return [
                    NewEvent.of(
                        OrderConfirmed(
                            order_id=order.id,
                            customer_id=order.customer_id,
                            total_cents=order.total_cents,
                        )
                    )
                ]
        case PaymentFailed(reason=reason):
            if order.status in (OrderStatus.PENDING, OrderStatus.RESERVED):
                return [
                    NewEvent(
                        type="order.payment-failed", data={"order_id": order.id, "reason": reason}
                    )
                ]
        case StockReleased(reason=reason):
            # The compensation is done: the order is cancelled once its stock is back.
            return [cancelled(order.payment_failure or reason)]
    return []
    # --8<-- [end:react]


# --8<-- [start:expire]
SAGA_DEADLINE_REASON = "saga deadline passed"


def expire(order: Order) -> list[NewEvent]:
    """The order's saga deadline passed: cancel it, unless it ended in the meantime.

    The cancellation is the compensation's trigger: inventory gives the stock back (or never
    takes it), payment refunds a charge that went through.
    """
    if order.version == 0 or order.is_final:
        return []
    return [
        NewEvent.of(
            OrderCancelled(
                order_id=order.id, customer_id=order.customer_id, reason=SAGA_DEADLINE_REASON
            )
        )
    ]
    # --8<-- [end:expire]
