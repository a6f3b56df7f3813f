"""Notification's business function, and its handler table: an order event in, an email job
handed to Celery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import structlog

from services.notification.emails import compose
from services.notification.recipients import customer_address
from services.notification.repository import NotificationRepository, OrderStream
from shared import topology
from shared.contracts import Envelope, OrderCancelled, OrderConfirmed, OrderPlaced
from shared.handlers import HandlerTable
from shared.messaging import HeldBackError, handled_before, held_since
from shared.metrics import ORDER_GAPS
from shared.ordering import KeyState, Outcome, position, skip_to

log = structlog.get_logger(__name__)

Enqueue = Callable[[str], Awaitable[None]]


@dataclass
class NotificationDeps:
    notifications: NotificationRepository
    # Hands the email to a Celery worker (EmailTasks.enqueue).
    enqueue: Enqueue
    # Customers have no address book here: mail goes to <customer_id>@<this domain>.
    mail_domain: str
    # How long an order's event waits for the one before it ("confirmed" for "received"):
    # past it, the gap is reported and its email goes out without waiting any longer.
    order_wait_seconds: float = 60.0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


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
    stream, after = await in_order(envelope, deps)  # raises HeldBackError while it is early
    notification, first = await deps.notifications.record(
        {
            "_id": envelope.id,
            "order_id": event.order_id,
            "event_type": envelope.type,
            "to": to,
            "subject": email.subject,
            "body": email.body,
            # The email this one goes out after (the worker waits for it to be sent).
            "after": after,
        }
    )
    if not first:
        handled_before()  # a redelivery or a copy: the notification was recorded already
    if notification["state"] != "sent":
        await deps.enqueue(envelope.id)
    if stream is not None:
        await deps.notifications.advance(event.order_id, stream)
    return []
    # --8<-- [end:notify-customer]


# --8<-- [start:in-order]
async def in_order(
    envelope: Envelope, deps: NotificationDeps
) -> tuple[OrderStream | None, str | None]:
    """An order's emails in the order of its events: "received" before "confirmed", even when
    the confirmation overtook it (a retried delivery comes back behind newer ones).

    Returns the order's stream once this event is handled (to save after it is; None: nothing
    to advance), and the event whose email this one's must follow. Raises
    :class:`HeldBackError` while the event is early -- its ``previous_sequence`` not handled
    here yet -- and for at most ``order_wait_seconds``: past that, the gap is reported (log,
    ``warren_order_gaps_total``) and the event handled."""
    order_id = envelope.correlation_id
    stream = await deps.notifications.order_stream(order_id)
    state = stream.state
    if envelope.previous_sequence is None:
        # Its publisher does not say what it follows (one from before this version): not
        # ordered, but counted as handled, so that its successors do not wait for it.
        moved = replace(state, last_applied=max(state.last_applied, envelope.sequence))
        return OrderStream(moved, envelope.id), None
    where = position(state, envelope.sequence, envelope.previous_sequence)
    if where is Outcome.DUPLICATE:
        return None, None
    if where is Outcome.LATE:
        log.warning("order event came after its gap was reported", sequence=envelope.sequence)
        ORDER_GAPS.add(1, {"queue": topology.NOTIFICATION_ORDER_EVENTS.name, "kind": "late"})
        return None, None  # its email still goes out, late
    after = stream.last_event if envelope.previous_sequence == state.last_applied else None
    # Nothing of this order handled by this version: its earlier emails may have been recorded
    # by the one before it (a rolling deploy), and then it is not early. (Not one recorded by
    # this version whose handler has not moved the stream on yet: that one it waits for.)
    early = where is Outcome.HELD
    if early and state == KeyState() and await deps.notifications.has_unordered_emails(order_id):
        return _applied(state, envelope), None
    if early:
        waited = (deps.clock() - (held_since() or deps.clock())).total_seconds()
        if waited < deps.order_wait_seconds:
            raise HeldBackError(
                f"{envelope.type} #{envelope.sequence} of order {order_id} waits for "
                f"#{envelope.previous_sequence} (handled so far: #{state.last_applied})"
            )
        state, gap = skip_to(order_id, state, envelope.sequence, f"waited {waited:.0f} s")
        log.warning("order gap: going on without", missing=f"#{gap.expected}..#{gap.got - 1}")
        ORDER_GAPS.add(1, {"queue": topology.NOTIFICATION_ORDER_EVENTS.name, "kind": "gap"})
    return _applied(state, envelope), after
    # --8<-- [end:in-order]


def _applied(state: KeyState, envelope: Envelope) -> OrderStream:
    """The order's stream once ``envelope`` is handled: its sequence, and it as the last event."""
    return OrderStream(replace(state, last_applied=envelope.sequence), envelope.id)


# --8<-- [start:handler-table]
ORDER_EVENTS = {
    OrderPlaced: notify_customer,
    OrderConfirmed: notify_customer,
    OrderCancelled: notify_customer,
}
# The order events come one way or the other (settings.order_events_via): both are consumed,
# so that what waits on the way not taken is still handled after a switch.
HANDLERS: HandlerTable[NotificationDeps] = {
    topology.NOTIFICATION_ORDER_EVENTS: ORDER_EVENTS,
    **{partition: ORDER_EVENTS for partition in topology.NOTIFICATION_ORDER_PARTITIONS.partitions},
}
# --8<-- [end:handler-table]
