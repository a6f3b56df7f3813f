"""Events as the services publish them, for tests that need one without a running shop."""

from __future__ import annotations

from shared.contracts import OrderPlaced, PricedLine
from tests.support.sealing import sealed_token


def order_placed(order_id: str, customer: str = "bugs-bunny") -> OrderPlaced:
    """One carrot mug (12.50) for ``customer``, paid with a token sealed for payment."""
    return OrderPlaced(
        order_id=order_id,
        customer_id=customer,
        lines=(PricedLine(sku="CARROT-MUG", quantity=1, unit_price_cents=1250),),
        total_cents=1250,
        sealed_payment_token=sealed_token(order_id),
    )
