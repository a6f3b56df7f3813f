"""The order aggregate: a state machine that ends right whatever the order of arrival."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from services.order.domain import (
    SAGA_DEADLINE_REASON,
    Order,
    OrderEvent,
    OrderStatus,
    TooEarlyError,
    expire,
    is_published,
    react,
)
from services.order.repository import to_event
from shared.contracts import (
    Envelope,
    EventData,
    OrderCancelled,
    OrderPlaced,
    OrderPlacedV1,
    PaymentFailed,
    PaymentSucceeded,
    PricedLine,
    StockRejected,
    StockReleased,
    StockReserved,
)
from tests.support.sealing import sealed_token

ORDER_ID = "order-42"
LINES = (PricedLine(sku="CARROT-MUG", quantity=2, unit_price_cents=1250),)


def placed_order() -> tuple[Order, list[OrderEvent]]:
    placed = OrderPlaced(
        order_id=ORDER_ID,
        customer_id="bugs-bunny",
        lines=LINES,
        total_cents=2500,
        sealed_payment_token=sealed_token(ORDER_ID),
    )
    events = [_stored(placed, 1)]
    return Order.from_events(ORDER_ID, events), events


def _stored(new: EventData, version: int) -> OrderEvent:
    return OrderEvent(version=version, data=new, occurred_at=datetime.now(UTC))


def feed(incoming: list[EventData]) -> Order:
    """Run saga events through react/apply the way the service does, one at a time; one that
    comes too early goes round again after the others (the consumer's delay queue)."""
    order, events = placed_order()
    pending, rounds = list(incoming), 0
    while pending and rounds < 100:
        event, rounds = pending.pop(0), rounds + 1
        try:
            decided = react(order, event)
        except TooEarlyError:
            pending.append(event)
            continue
        for new in decided:
            stored = _stored(new, order.version + 1)
            events.append(stored)
            order.apply(stored)
    assert Order.from_events(ORDER_ID, events).status == order.status  # replay gives the same
    return order


reserved = StockReserved(
    order_id=ORDER_ID, lines=LINES, amount_cents=2500, sealed_payment_token=sealed_token(ORDER_ID)
)
paid = PaymentSucceeded(order_id=ORDER_ID, payment_id="ch_1", amount_cents=2500)
declined = PaymentFailed(order_id=ORDER_ID, reason="card declined")
released = StockReleased(order_id=ORDER_ID, reason="payment failed: card declined")
rejected = StockRejected(
    order_id=ORDER_ID, reason="insufficient stock", shortages={"CARROT-MUG": 2}
)


def test_a_paid_order_is_confirmed() -> None:
    order = feed([reserved, paid])
    assert order.status == OrderStatus.CONFIRMED
    assert [entry["type"] for entry in order.history] == [
        "order.placed",
        "order.stock-reserved",
        "order.confirmed",
    ]


def test_a_declined_order_is_cancelled_only_once_its_stock_is_released() -> None:
    order = feed([reserved, declined])
    assert order.status == OrderStatus.CANCELLING
    order = feed([reserved, declined, released])
    assert order.status == OrderStatus.CANCELLED
    assert order.cancel_reason == "card declined"


def test_an_order_without_stock_is_cancelled() -> None:
    order = feed([rejected])
    assert order.status == OrderStatus.CANCELLED
    assert "insufficient stock" in (order.cancel_reason or "")


@pytest.mark.parametrize("duplicate", [reserved, paid])
def test_duplicates_change_nothing(duplicate: EventData) -> None:
    once = feed([reserved, paid])
    twice = feed([reserved, duplicate, paid, duplicate])
    assert twice.status == once.status
    assert twice.version == once.version


@pytest.mark.parametrize("arrival", list(itertools.permutations([reserved, paid])))
def test_success_in_any_order_confirms(arrival: tuple[EventData, ...]) -> None:
    assert feed(list(arrival)).status == OrderStatus.CONFIRMED


@pytest.mark.parametrize("arrival", list(itertools.permutations([reserved, declined, released])))
def test_compensation_in_any_order_cancels(arrival: tuple[EventData, ...]) -> None:
    assert feed(list(arrival)).status == OrderStatus.CANCELLED


@pytest.mark.parametrize("arrival", list(itertools.permutations([reserved, declined, released])))
def test_a_declined_order_is_cancelled_for_the_declined_card_whatever_came_first(
    arrival: tuple[EventData, ...],
) -> None:
    """Seen on RabbitMQ 4.0.5: stock.released overtook payment.failed, and the order was
    cancelled for "payment failed: card declined" without its payment failure recorded (its
    metrics said "other"). The release now waits for the payment failure."""
    order = feed(list(arrival))
    assert order.status == OrderStatus.CANCELLED
    assert order.payment_failure == "card declined"
    assert order.cancel_reason == "card declined"


def test_a_stock_release_before_the_payment_failure_waits_for_it() -> None:
    order = feed([reserved])
    with pytest.raises(TooEarlyError):
        react(order, released)


def test_final_orders_ignore_everything() -> None:
    order = feed([rejected])
    assert react(order, paid) == []
    assert react(order, reserved) == []


def test_events_for_an_unknown_order_are_ignored() -> None:
    assert react(Order(id="nobody"), paid) == []


def test_an_order_past_its_saga_deadline_is_cancelled_whatever_stage_it_is_stuck_at() -> None:
    for stuck in ([], [reserved], [reserved, declined]):
        order = feed(stuck)
        [cancelled] = expire(order)
        assert isinstance(cancelled, OrderCancelled)
        assert cancelled.reason == SAGA_DEADLINE_REASON
        order.apply(_stored(cancelled, order.version + 1))
        assert order.status == OrderStatus.CANCELLED


def test_a_final_order_is_not_expired() -> None:
    assert expire(feed([reserved, paid])) == []
    assert expire(Order(id="nobody")) == []


def test_an_order_placed_before_tokens_were_sealed_still_loads_from_the_store() -> None:
    """Its stream starts with order.placed v1 (retired from the bus, readable from the store)."""
    v1 = OrderPlacedV1(
        order_id=ORDER_ID,
        customer_id="bugs-bunny",
        lines=LINES,
        total_cents=2500,
        payment_token="tok_visa",
    )
    stored = {
        "version": 1,
        "occurred_at": datetime.now(UTC),
        "envelope": Envelope.wrap(v1, source="order").model_dump(mode="json"),
    }
    event = to_event(stored)
    assert event.data == v1
    order = Order.from_events(ORDER_ID, [event])
    assert (order.status, order.customer_id, order.total_cents) == (
        OrderStatus.PENDING,
        "bugs-bunny",
        2500,
    )
    assert not is_published(v1)  # never published again
