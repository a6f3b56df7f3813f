"""Notification's business function, and its handler table: an order event in, an email job
handed to Celery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.notification.emails import compose
from services.notification.recipients import customer_address
from services.notification.repository import NotificationRepository
from shared import topology
from shared.contracts import Envelope, OrderCancelled, OrderConfirmed, OrderPlaced
from shared.handlers import HandlerTable
from shared.messaging import handled_before

Enqueue = Callable[[str], Awaitable[None]]


@dataclass
class NotificationDeps:
    notifications: NotificationRepository
    # Hands the email to a Celery worker (EmailTasks.enqueue).
    enqueue: Enqueue
    # Customers have no address book here: mail goes to <customer_id>@<this domain>.
    mail_domain: str


# --8<-- [start:notify-customer]
async def notify_customer(
    envelope: Envelope,
    event: OrderPlaced | OrderConfirmed | OrderCancelled,
    deps: NotificationDeps,
) -> list[Envelope]:
    """Record the notification (keyed by event id) and enqueue its delivery.

    A duplicate event finds the notification already recorded; it is enqueued again only if
    not sent yet (the Celery task itself refuses to send twice). A customer id that makes no
    email address is poison (dead-lettered with the reason): nothing is recorded or sent.
    """
    email = compose(event)
    if email is None:
        return []
    to = customer_address(event.customer_id, deps.mail_domain)
    notification, first = await deps.notifications.record(
        {
            "_id": envelope.id,
            "order_id": event.order_id,
            "event_type": envelope.type,
            "to": to,
            "subject": email.subject,
            "body": email.body,
        }
    )
    if not first:
        handled_before()  # a redelivery or a copy: the notification was recorded already
    if notification["state"] != "sent":
        await deps.enqueue(envelope.id)
    return []
    # --8<-- [end:notify-customer]


# --8<-- [start:handler-table]
HANDLERS: HandlerTable[NotificationDeps] = {
    topology.NOTIFICATION_ORDER_EVENTS: {
        OrderPlaced: notify_customer,
        OrderConfirmed: notify_customer,
        OrderCancelled: notify_customer,
    },
}
# --8<-- [end:handler-table]
