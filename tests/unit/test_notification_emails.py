from __future__ import annotations

from services.notification.emails import compose
from shared.contracts import OrderCancelled, OrderConfirmed, OrderPlaced, PricedLine, StockReserved
from tests.support.sealing import sealed_token


def test_each_lifecycle_event_has_its_email() -> None:
    placed = compose(
        OrderPlaced(
            order_id="12345678-aaaa",
            customer_id="c",
            lines=(PricedLine(sku="CARROT-MUG", quantity=2, unit_price_cents=1250),),
            total_cents=2500,
            sealed_payment_token=sealed_token("12345678-aaaa"),
        )
    )
    assert placed is not None and "2 x CARROT-MUG" in placed.body and "25.00 EUR" in placed.body
    confirmed = compose(OrderConfirmed(order_id="12345678-aaaa", customer_id="c", total_cents=2500))
    assert confirmed is not None and "confirmed" in confirmed.subject
    cancelled = compose(
        OrderCancelled(order_id="12345678-aaaa", customer_id="c", reason="card declined")
    )
    assert cancelled is not None and "card declined" in cancelled.body


def test_other_events_send_nothing() -> None:
    reserved = StockReserved(
        order_id="o", lines=(), amount_cents=0, sealed_payment_token=sealed_token("o")
    )
    assert compose(reserved) is None
