"""What each order event says to the customer. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from shared.contracts import EventData, OrderCancelled, OrderConfirmed, OrderPlaced


@dataclass(frozen=True)
class Email:
    subject: str
    body: str


def _euros(cents: int) -> str:
    return f"{cents / 100:.2f} EUR"


def compose(event: EventData) -> Email | None:
    """The email for ``event``, or None if this event type sends none."""
    short = event.order_id[:8]
    match event:
        case OrderPlaced(lines=lines, total_cents=total):
            items = "\n".join(f"  {line.quantity} x {line.sku}" for line in lines)
            return Email(
                subject=f"We received your order {short}",
                body=f"Thank you! Your order {event.order_id}:\n{items}\n"
                f"Total: {_euros(total)}\nWe will write again when it is confirmed.\n",
            )
        case OrderConfirmed(total_cents=total):
            return Email(
                subject=f"Your order {short} is confirmed",
                body=f"Payment of {_euros(total)} received. Order {event.order_id} is confirmed.\n",
            )
        case OrderCancelled(reason=reason):
            return Email(
                subject=f"Your order {short} was cancelled",
                body=f"We are sorry: order {event.order_id} was cancelled ({reason}).\n"
                "You have not been charged.\n",
            )
    return None
