"""Notification's business function: an order event in, an email job handed to Celery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.notification.emails import compose
from services.notification.repository import NotificationRepository
from shared.contracts import Envelope, EventData, OrderCancelled, OrderConfirmed, OrderPlaced

Enqueue = Callable[[str], Awaitable[None]]


# --8<-- [start:notify-customer]
async def notify_customer(
    envelope: Envelope,
    event: EventData,
    repo: NotificationRepository,
    enqueue: Enqueue,
    *,
    mail_domain: str,
) -> list[Envelope]:
    """Record the notification (keyed by event id) and enqueue its delivery.

    A duplicate event finds the notification already recorded; it is enqueued again only if
    not sent yet (the Celery task itself refuses to send twice).
    """
    email = compose(event)
    if email is None:
        return []
    assert isinstance(event, OrderPlaced | OrderConfirmed | OrderCancelled)
    notification = await repo.record(
        {
            "_id": envelope.id,
            "order_id": event.order_id,
            "event_type": envelope.type,
            "to": f"{event.customer_id}@{mail_domain}",
            "subject": email.subject,
            "body": email.body,
        }
    )
    if notification["state"] != "sent":
        await enqueue(envelope.id)
    return []
    # --8<-- [end:notify-customer]
