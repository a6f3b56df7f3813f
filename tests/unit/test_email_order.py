"""An order's emails in the order of its events: "received" before "confirmed", even when the
confirmation overtakes it. The order service names each published event's predecessor
(``previous_sequence``); notification holds an early event back until its predecessor is
handled, for a bounded time, past which it reports the gap and sends anyway."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from services.in_memory import InMemoryShop, open_shop
from services.inventory.catalog import CatalogItem
from services.notification.handlers import NotificationDeps, notify_customer
from services.notification.repository import NotificationRepository, OrderStream
from shared import messaging
from shared.contracts import Envelope, OrderConfirmed
from shared.messaging import HeldBackError
from shared.ordering import KeyState
from shared.testing.memory_mongo import AsyncMongomockDatabase
from tests.support.events import order_placed

NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def placed(order_id: str = "o-1") -> Envelope:
    return Envelope.wrap(order_placed(order_id), source="order", sequence=1, previous_sequence=0)


def confirmed(order_id: str = "o-1") -> Envelope:
    # Version 2 of the stream is order.stock-reserved, which is never published.
    event = OrderConfirmed(order_id=order_id, customer_id="bugs-bunny", total_cents=1250)
    return Envelope.wrap(event, source="order", sequence=3, previous_sequence=1)


@pytest.fixture
def deps() -> NotificationDeps:
    enqueued: list[str] = []

    async def enqueue(notification_id: str) -> None:
        enqueued.append(notification_id)

    deps = NotificationDeps(
        notifications=NotificationRepository(AsyncMongomockDatabase("email_order")),
        enqueue=enqueue,
        mail_domain="customers.warren.example",
        order_wait_seconds=60,
        clock=lambda: NOON,
    )
    deps.enqueued = enqueued  # type: ignore[attr-defined]
    return deps


@pytest.fixture
def held_since_reset() -> Iterator[list[datetime | None]]:
    """What the consumer would say: since when this delivery has been failing or held back."""
    since: list[datetime | None] = [None]
    token = messaging._held_since.set(None)
    yield since
    messaging._held_since.reset(token)


async def handle(envelope: Envelope, deps: NotificationDeps, since: datetime | None = None):
    messaging._held_since.set(since)
    return await notify_customer(envelope, envelope.payload(), deps)


async def test_a_confirmation_that_comes_first_waits_for_the_order_received(
    deps: NotificationDeps, held_since_reset: list
) -> None:
    early, first = confirmed(), placed()
    with pytest.raises(HeldBackError, match=r"order\.confirmed #3 of order o-1 waits for #1"):
        await handle(early, deps)
    assert deps.enqueued == []  # nothing recorded, nothing sent
    await handle(first, deps)
    await handle(early, deps, since=NOON - timedelta(seconds=2))  # back from its delay queue
    assert deps.enqueued == [first.id, early.id]
    stream = await deps.notifications.order_stream("o-1")
    assert stream == OrderStream(KeyState(last_applied=3), early.id)
    confirmation = await deps.notifications.notifications.find_one({"_id": early.id})
    assert confirmation["after"] == first.id  # the worker sends it after "received"


async def test_an_event_held_back_too_long_is_sent_and_its_gap_reported(
    deps: NotificationDeps, held_since_reset: list
) -> None:
    early, lost = confirmed(), placed()
    with pytest.raises(HeldBackError):
        await handle(early, deps, since=NOON - timedelta(seconds=59))
    await handle(early, deps, since=NOON - timedelta(seconds=61))  # past the bound: a gap
    assert deps.enqueued == [early.id]
    stream = await deps.notifications.order_stream("o-1")
    assert stream.state == KeyState(3, skipped=((1, 3),))
    # The missing one comes after all: late, reported, and its email still goes out.
    await handle(lost, deps)
    assert deps.enqueued == [early.id, lost.id]
    assert (await deps.notifications.order_stream("o-1")).state.last_applied == 3


async def test_a_duplicate_in_the_stream_is_not_held_back(
    deps: NotificationDeps, held_since_reset: list
) -> None:
    first = placed()
    await handle(first, deps)
    await handle(confirmed(), deps)
    await handle(first, deps)  # redelivered after its successor: done before, not early
    assert (await deps.notifications.order_stream("o-1")).state.last_applied == 3


async def test_an_event_whose_source_names_no_predecessor_is_not_ordered(
    deps: NotificationDeps, held_since_reset: list
) -> None:
    unordered = Envelope.wrap(confirmed().payload(), source="order", sequence=3)
    await handle(unordered, deps)
    assert deps.enqueued == [unordered.id]
    # Counted as handled, so that what follows it does not wait for it (a rolling deploy).
    stream = await deps.notifications.order_stream("o-1")
    assert stream == OrderStream(KeyState(last_applied=3), unordered.id)


async def test_after_an_upgrade_an_order_whose_first_email_the_old_version_recorded_waits_not(
    deps: NotificationDeps, held_since_reset: list
) -> None:
    first = placed()
    await deps.notifications.record(  # recorded by the version before: no order_streams
        {"_id": first.id, "order_id": "o-1", "event_type": "order.placed"}
    )
    then = confirmed()
    await handle(then, deps)  # not held back: "received" was recorded, by the old version
    assert deps.enqueued == [then.id]
    assert (await deps.notifications.order_stream("o-1")).state.last_applied == 3


async def test_a_confirmation_handled_while_the_received_one_is_half_done_waits_for_it(
    deps: NotificationDeps, held_since_reset: list
) -> None:
    # The "received" handler has recorded its email but not yet moved the order's stream on
    # (two deliveries of one order side by side: competing replicas, or one consumer's
    # prefetch). The confirmation must not take that email for an old version's and go out
    # unordered: `make ordering-compare` caught one "confirmed" sent 4 ms before its "received".
    first = placed()
    await deps.notifications.record(
        {"_id": first.id, "order_id": "o-1", "event_type": "order.placed", "after": None}
    )
    with pytest.raises(HeldBackError):
        await handle(confirmed(), deps)
    assert deps.enqueued == []


def test_an_envelope_whose_predecessor_comes_after_it_is_refused() -> None:
    with pytest.raises(ValueError, match=r"previous_sequence 3 must lie in 0\.\.2"):
        Envelope.wrap(confirmed().payload(), source="order", sequence=3, previous_sequence=3)


@pytest.fixture
async def shop() -> InMemoryShop:
    databases: dict[str, AsyncMongomockDatabase] = {}

    def database(service: str) -> AsyncMongomockDatabase:
        return databases.setdefault(service, AsyncMongomockDatabase(f"order_{service}"))

    catalog = [CatalogItem("RABBIT-PLUSH", "Plush", 1999, 1)]
    return await open_shop(database, catalog=catalog)


async def test_each_published_order_event_names_the_one_published_before_it(
    shop: InMemoryShop,
) -> None:
    paid = await shop.place("RABBIT-PLUSH")
    await shop.bus.drain()
    sold_out = await shop.place("RABBIT-PLUSH")  # the only one is sold: cancelled at once
    await shop.bus.drain()
    chains = {
        order_id: [
            (e.type, e.sequence, e.previous_sequence)
            for e in shop.bus.published
            if e.source == "order" and e.correlation_id == order_id
        ]
        for order_id in (paid, sold_out)
    }
    assert chains[paid] == [("order.placed", 1, 0), ("order.confirmed", 3, 1)]
    assert chains[sold_out] == [("order.placed", 1, 0), ("order.cancelled", 2, 1)]


@pytest.mark.parametrize("seed", range(5))
async def test_emails_are_recorded_in_event_order_whatever_the_delivery_order(
    shop: InMemoryShop, seed: int
) -> None:
    orders = [await shop.place("RABBIT-PLUSH") for _ in range(3)]  # one in stock: 1 confirmed
    await shop.bus.drain(shuffle=random.Random(seed), twice=True)
    for order_id in orders:
        notes = shop.notification.notifications.notifications.find({"order_id": order_id})
        kinds = [note["event_type"] async for note in notes.sort("created_at", 1)]
        assert kinds[0] == "order.placed" and len(kinds) == 2, kinds
    assert shop.bus.dead_letters == []


def test_an_email_waiting_for_the_previous_one_goes_back_to_the_queue_using_no_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's side: the task waits for the order's previous email, a second at a time, for
    up to ``order_wait_seconds`` (60). A wait must not count as a failure. It did: the wait was
    ``self.retry(max_retries=None)`` -- "the task's default" (8) to Celery -- and the ninth wait
    dead-lettered the email (found by `make chaos`: a pool child killed while sending an order's
    first email, its second email in notification.emails.dlq). A ``max_retries`` of its own
    would stay set on the task object for the worker's next tasks. So a wait is a new task."""
    from services.notification import worker
    from services.notification.settings import NotificationSettings

    def waiting(notification_id: str, *_: object, **__: object) -> str:
        raise worker.EarlierEmailPendingError(f"{notification_id} goes out after its previous")

    requeued: list[tuple[tuple[str, ...], float]] = []
    task = worker.make_celery(NotificationSettings()).tasks[worker.TASK_NAME]
    monkeypatch.setattr(worker, "deliver", waiting)
    monkeypatch.setattr(
        task, "apply_async", lambda args, countdown: requeued.append((args, countdown))
    )
    task.push_request(id="t-1", retries=50, called_directly=False, is_eager=False)
    try:
        assert task.run("n-2") == "waiting"  # done: no retry, no failure
    finally:
        task.pop_request()
    assert requeued == [(("n-2",), 1)]  # a new task, a second later
    assert getattr(task, "override_max_retries", None) is None  # nothing left for the next task


def test_a_real_failure_after_a_wait_still_has_its_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import smtplib

    from celery.exceptions import Retry

    from services.notification import worker
    from services.notification.settings import NotificationSettings

    def failing(*_: object, **__: object) -> str:
        raise smtplib.SMTPServerDisconnected("the mail system went away")

    retried: list[object] = []

    class Signature:
        def apply_async(self) -> None:
            retried.append(self)

    task = worker.make_celery(NotificationSettings()).tasks[worker.TASK_NAME]
    monkeypatch.setattr(worker, "deliver", failing)
    monkeypatch.setattr(task, "signature_from_request", lambda *_, **__: Signature())
    task.push_request(id="t-2", retries=3, called_directly=False, is_eager=False)
    try:
        with pytest.raises(Retry):  # retried (the 4th of 8), not dead-lettered
            task("n-3")
    finally:
        task.pop_request()
    assert len(retried) == 1
