"""The order service's copy of recent streams (``EventStore.load(recent=True)``), attacked.

A saga step in the process that placed the order, or took its last step, reads nothing: it
decides from the stream it already holds. With two replicas that copy may be behind. These
tests put one replica's copy behind the database on purpose and check that what it decides is
what the database's stream says -- no forked stream, no event appended twice, no event held
back for ever -- on both backends (``db``: the stand-in over the wire, and mongomock).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.order.handlers import OrderDeps, PlaceOrder, follow_saga, place_order
from services.order.repository import EventStore, IdempotencyKeys, OrderViews
from shared.contracts import (
    Envelope,
    EventData,
    OrderLine,
    PaymentFailed,
    PaymentSucceeded,
    PricedLine,
    Quote,
    QuotedLine,
    StockReleased,
    StockReserved,
)
from shared.messaging import HeldBackError
from tests.support.recording import Recording
from tests.support.sealing import PAYMENT_RECIPIENT, sealed_token


async def _quote(request: Any) -> Quote:
    line = QuotedLine(sku="CARROT-MUG", quantity=1, known=True, unit_price_cents=1250, available=9)
    return Quote(lines=(line,))


def replica(db: Any, recent: int = 100) -> OrderDeps:
    """One order replica: its own event store (and copy of recent streams), the shared db."""
    store = EventStore(db, recent=recent)
    store.events = Recording(store.events)  # type: ignore[assignment]
    return OrderDeps(
        store=store,
        views=OrderViews(db),
        keys=IdempotencyKeys(db),
        quote=_quote,
        wake_relay=lambda documents: None,
        payment_key=PAYMENT_RECIPIENT,
    )


def finds(deps: OrderDeps) -> int:
    return deps.store.events.calls["find"]  # type: ignore[attr-defined]


async def place(deps: OrderDeps) -> str:
    command = PlaceOrder("bugs-bunny", (OrderLine(sku="CARROT-MUG", quantity=1),), "tok_visa")
    return (await place_order(command, deps, idempotency_key=command.fingerprint())).order_id


def saga_event(data: EventData) -> Envelope:
    return Envelope.wrap(data, source="inventory" if "stock" in type(data).__name__ else "payment")


def reserved(order_id: str) -> Envelope:
    line = PricedLine(sku="CARROT-MUG", quantity=1, unit_price_cents=1250)
    return saga_event(
        StockReserved(
            order_id=order_id,
            lines=(line,),
            amount_cents=1250,
            sealed_payment_token=sealed_token(order_id),
        )
    )


async def stream(deps: OrderDeps, order_id: str) -> list[str]:
    return [event.type for event in await deps.store.load(order_id)]


async def test_the_replica_that_placed_an_order_follows_its_saga_without_reading_it(
    db: Any,
) -> None:
    one = replica(db)
    await one.create_indexes()
    order_id = await place(one)
    before = finds(one)

    await follow_saga(*_split(reserved(order_id)), one)
    await follow_saga(*_split(saga_event(paid(order_id))), one)

    assert finds(one) == before  # two saga steps, no stream read
    assert await stream(replica(db), order_id) == [
        "order.placed",
        "order.stock-reserved",
        "order.confirmed",
    ]


async def test_a_copy_that_is_behind_does_not_fork_the_stream(db: Any) -> None:
    """Replica one placed the order (its copy: version 1); replica two took the next step
    (version 2). Replica one decides from its stale copy, and its append at version 2
    collides: it reads the stream and decides again."""
    one, two = replica(db), replica(db)
    await one.create_indexes()
    order_id = await place(one)
    await follow_saga(*_split(reserved(order_id)), two)

    await follow_saga(*_split(saga_event(paid(order_id))), one)

    assert await stream(replica(db), order_id) == [
        "order.placed",
        "order.stock-reserved",
        "order.confirmed",
    ]
    view = await one.views.get(order_id)
    assert view is not None and view["status"] == "CONFIRMED" and view["version"] == 3


async def test_a_copy_that_is_behind_does_not_hold_an_event_back_for_ever(db: Any) -> None:
    """``stock.released`` is early until the order has heard of its ``payment.failed``. Replica
    one's copy has not (replica two handled it): the database has, so the event is not held
    back -- for the copy alone it would be, at every redelivery, until the saga deadline."""
    one, two = replica(db), replica(db)
    await one.create_indexes()
    order_id = await place(one)
    await follow_saga(*_split(reserved(order_id)), two)
    await follow_saga(*_split(saga_event(PaymentFailed(order_id=order_id, reason="no"))), two)

    released = saga_event(StockReleased(order_id=order_id, reason="payment failed: no"))
    await follow_saga(*_split(released), one)  # no HeldBackError

    assert (await stream(replica(db), order_id))[-1] == "order.cancelled"


async def test_an_early_event_is_still_held_back_when_the_database_agrees(db: Any) -> None:
    one = replica(db)
    await one.create_indexes()
    order_id = await place(one)
    released = saga_event(StockReleased(order_id=order_id, reason="payment failed: no"))
    with pytest.raises(HeldBackError):
        await follow_saga(*_split(released), one)
    assert await stream(replica(db), order_id) == ["order.placed"]


async def test_a_duplicate_seen_only_by_another_replica_appends_nothing(db: Any) -> None:
    one, two = replica(db), replica(db)
    await one.create_indexes()
    order_id = await place(one)
    event = reserved(order_id)
    await follow_saga(*_split(event), two)

    await follow_saga(*_split(event), one)  # its copy says "not yet": the database says "done"

    assert await stream(replica(db), order_id) == ["order.placed", "order.stock-reserved"]


async def test_what_a_replica_read_is_not_kept_a_failover_may_take_it_back(db: Any) -> None:
    """Replica one reads a stream that holds replica two's ``stock-reserved``; then a failover
    rolls that write back (it never reached a majority). Had replica one kept what it read,
    it would confirm the order at version 3 -- a stream with a hole at 2."""
    one, two = replica(db), replica(db)
    await one.create_indexes()
    order_id = await place(two)  # replica one has no copy of this order
    event = reserved(order_id)
    await follow_saga(*_split(event), two)
    await follow_saga(*_split(event), one)  # a duplicate: replica one reads the stream
    await db["order_events"].delete_one({"order_id": order_id, "version": 2})  # rolled back

    await follow_saga(*_split(saga_event(paid(order_id))), one)

    versions = [event.version for event in await replica(db).store.load(order_id)]
    assert versions == [1, 2]  # confirmed at 2, from the database's stream: no hole


async def test_two_steps_of_one_order_at_once_in_one_replica_append_each_once(db: Any) -> None:
    one = replica(db)
    await one.create_indexes()
    order_id = await place(one)
    paid_event = saga_event(paid(order_id))

    await asyncio.gather(
        follow_saga(*_split(reserved(order_id)), one), follow_saga(*_split(paid_event), one)
    )

    types = await stream(replica(db), order_id)
    assert types[0] == "order.placed" and types[-1] == "order.confirmed"
    assert len(types) == len(set(types))  # each event once
    await follow_saga(*_split(paid_event), one)  # and the copy it kept is the stream's
    assert await stream(replica(db), order_id) == types


async def test_the_copy_keeps_the_most_recent_orders_only(db: Any) -> None:
    one = replica(db, recent=1)
    await one.create_indexes()
    first, second = await place(one), await place(one)
    before = finds(one)
    await follow_saga(*_split(reserved(second)), one)  # its copy is kept
    assert finds(one) == before
    await follow_saga(*_split(reserved(first)), one)  # its copy made way for the second's
    assert finds(one) == before + 1


def _split(envelope: Envelope) -> tuple[Envelope, EventData]:
    return envelope, envelope.payload()


def paid(order_id: str) -> PaymentSucceeded:
    return PaymentSucceeded(order_id=order_id, payment_id="p", amount_cents=1250)
