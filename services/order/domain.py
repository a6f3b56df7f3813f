"""The order aggregate, event-sourced: its state is the fold of its events. Pure, no I/O.

The order's own stream holds these events (``version`` 1, 2, ...):

=========================  ==========================  =========  ==================================
class                      type                        published  meaning
=========================  ==========================  =========  ==================================
``OrderPlaced``            ``order.placed``            yes        accepted by the API
``OrderStockReserved``     ``order.stock-reserved``    no         inventory reserved every line
``OrderPaymentFailed``     ``order.payment-failed``    no         payment declined; waiting for
                                                                  the release
``OrderConfirmed``         ``order.confirmed``         yes        paid: final
``OrderCancelled``         ``order.cancelled``         yes        rejected or compensated: final
=========================  ==========================  =========  ==================================

Every one is a typed event class; the published ones are contracts (``shared.contracts``),
the two internal ones live here. An event is published if, and only if, it is a contract.

:func:`react` decides what a saga event means for the order. It is a state machine with
guards, so a duplicate or late event changes nothing, and events arriving out of order still
end in the right final state (``payment.succeeded`` before ``stock.reserved`` confirms).
"""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from shared.contracts import (
    EVENT_TYPES,
    RETIRED_EVENT_TYPES,
    EventData,
    EventTypes,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    OrderPlacedV1,
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


# --8<-- [start:internal-events]
class OrderStockReserved(EventData):
    """Inventory reserved every line (internal: other services heard ``stock.reserved``)."""

    TYPE: ClassVar[str] = "order.stock-reserved"


class OrderPaymentFailed(EventData):
    """Payment declined; the order waits for its stock to be released (internal)."""

    TYPE: ClassVar[str] = "order.payment-failed"
    reason: str


# What an order's stream may hold: the order's own internal events, and the contracts (a live
# view: a contract version registered later is readable here too) -- retired versions too,
# which orders placed before an upgrade keep (order.placed v1).
ORDER_EVENT_TYPES: EventTypes = ChainMap(
    {(cls.TYPE, cls.VERSION): cls for cls in (OrderStockReserved, OrderPaymentFailed)},
    EVENT_TYPES,  # type: ignore[arg-type]
    RETIRED_EVENT_TYPES,  # type: ignore[arg-type]
)


def is_published(event: EventData) -> bool:
    """Other services hear about an order event if it is a contract of the bus."""
    return EVENT_TYPES.get((event.TYPE, event.VERSION)) is type(event)
    # --8<-- [end:internal-events]


@dataclass(frozen=True)
class OrderEvent:
    """One event of an order's stream, as the aggregate folds it."""

    version: int  # its position in the order's stream: 1, 2, ...
    data: EventData
    occurred_at: datetime
    caused_by: str | None = None  # the id of the event it answered (a saga reply), if any

    @property
    def type(self) -> str:
        return self.data.TYPE


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
    # The version of its last event other services heard of (0: none yet): the next published
    # event names it as its predecessor (Envelope.previous_sequence).
    last_published: int = 0
    # The saga replies it has acted on (their event ids): one coming again is a duplicate.
    answered: set[str] = field(default_factory=set)

    # --8<-- [start:fold]
    @classmethod
    def from_events(cls, order_id: str, events: list[OrderEvent]) -> Order:
        order = cls(id=order_id)
        for event in sorted(events, key=lambda e: e.version):
            order.apply(event)
        return order

    def apply(self, event: OrderEvent) -> None:
        match event.data:
            case OrderPlaced() | OrderPlacedV1() as placed:
                self.customer_id = placed.customer_id
                self.lines = [line.model_dump(mode="json") for line in placed.lines]
                self.total_cents = placed.total_cents
                self.currency = placed.currency
                self.status = OrderStatus.PENDING
                self.placed_at = event.occurred_at
            case OrderStockReserved():
                self.status = OrderStatus.RESERVED
            case OrderPaymentFailed(reason=reason):
                self.status = OrderStatus.CANCELLING
                self.payment_failure = reason
            case OrderConfirmed():
                self.status = OrderStatus.CONFIRMED
            case OrderCancelled(reason=reason):
                self.status = OrderStatus.CANCELLED
                self.cancel_reason = reason
        self.version = event.version
        if event.caused_by:
            self.answered.add(event.caused_by)
        if is_published(event.data):
            self.last_published = event.version
        self.updated_at = event.occurred_at
        self.history.append(
            {"version": event.version, "type": event.type, "occurred_at": event.occurred_at}
        )
        # --8<-- [end:fold]

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


# --8<-- [start:react]
class TooEarlyError(Exception):
    """A saga event that answers something the order has not heard of yet: it comes again."""


def react(order: Order, incoming: EventData) -> list[EventData]:
    """What a saga event means for this order: the events to append (often none). Raises
    :class:`TooEarlyError` for one that must wait for another (it is held back, and comes
    again)."""
    if order.version == 0 or order.is_final:
        return []  # unknown order, or already decided: duplicates and late arrivals end here

    def cancelled(reason: str) -> OrderCancelled:
        return OrderCancelled(order_id=order.id, customer_id=order.customer_id, reason=reason)

    match incoming:
        case StockReserved() if order.status == OrderStatus.PENDING:
            return [OrderStockReserved(order_id=order.id)]
        case StockRejected(reason=reason):
            if order.status == OrderStatus.PENDING:
                return [cancelled(f"stock rejected: {reason}")]
        case PaymentSucceeded():
            if order.status in (OrderStatus.PENDING, OrderStatus.RESERVED):
                return [
                    OrderConfirmed(
                        order_id=order.id,
                        customer_id=order.customer_id,
                        total_cents=order.total_cents,
                    )
                ]
        case PaymentFailed(reason=reason):
            if order.status in (OrderStatus.PENDING, OrderStatus.RESERVED):
                return [OrderPaymentFailed(order_id=order.id, reason=reason)]
        case StockReleased(reason=reason):
            if order.status in (OrderStatus.PENDING, OrderStatus.RESERVED):
                # Inventory gives stock back after a payment failure (or a cancellation, which
                # makes the order final): that payment.failed is on its way, and the order
                # decides on the two together. Cancelling now would depend on which came first.
                raise TooEarlyError(
                    f"stock released for order {order.id}: its payment.failed first"
                )
            # The compensation is done: the order is cancelled once its stock is back.
            return [cancelled(order.payment_failure or reason)]
    return []
    # --8<-- [end:react]


# --8<-- [start:expire]
SAGA_DEADLINE_REASON = "saga deadline passed"


def expire(order: Order) -> list[EventData]:
    """The order's saga deadline passed: cancel it, unless it ended in the meantime.

    The cancellation is the compensation's trigger: inventory gives the stock back (or never
    takes it), payment refunds a charge that went through.
    """
    if order.version == 0 or order.is_final:
        return []
    return [
        OrderCancelled(
            order_id=order.id, customer_id=order.customer_id, reason=SAGA_DEADLINE_REASON
        )
    ]
    # --8<-- [end:expire]
