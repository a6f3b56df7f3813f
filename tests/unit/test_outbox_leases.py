"""The outbox relay's lease, in process (mongomock, a clock the test moves): who publishes an
event when replicas share one outbox. The real broker's part is in
tests/integration/test_outbox_replicas.py."""

from __future__ import annotations

from typing import Any

from services.order.repository import EventStore
from shared.outbox import OutboxRelay, retry_parked
from shared.testing.memory_mongo import AsyncMongomockDatabase
from tests.support.events import order_placed

LEASE = 10.0


class Clock:
    """The database's clock, as the relays read it; the test moves it."""

    def __init__(self) -> None:
        self.at = 1_000_000.0

    def now(self) -> float:
        return self.at


class Published(list[str]):
    async def __call__(self, doc: dict[str, Any]) -> None:
        self.append(doc["_id"])


def replica(
    db: AsyncMongomockDatabase, owner: str, clock: Clock
) -> tuple[EventStore, OutboxRelay, Published]:
    store, published = EventStore(db, outbox_owner=owner), Published()
    relay = OutboxRelay(store.events, published, owner=owner, lease_seconds=LEASE, clock=clock)  # type: ignore[arg-type]
    return store, relay, published


async def save(store: EventStore, order_id: str) -> list[dict[str, Any]]:
    return await store.append(order_id, 0, [order_placed(order_id)])


async def test_each_replica_sweeps_only_its_own_events() -> None:
    db, clock = AsyncMongomockDatabase("leases_own"), Clock()
    store_a, relay_a, published_a = replica(db, "a", clock)
    store_b, relay_b, published_b = replica(db, "b", clock)
    await save(store_a, "o1")
    await save(store_b, "o2")
    await relay_a.publish_pending()
    await relay_b.publish_pending()
    assert (published_a, published_b) == (["o1:000001"], ["o2:000001"])


async def test_a_dead_replicas_events_are_adopted_once_its_lease_ran_out() -> None:
    db, clock = AsyncMongomockDatabase("leases_dead"), Clock()
    store_a, relay_a, _ = replica(db, "a", clock)
    _, relay_b, published_b = replica(db, "b", clock)
    await relay_a.renew_lease()
    await save(store_a, "o1")  # ... and "a" dies before publishing it
    await relay_b.publish_pending()
    assert published_b == []  # a's lease holds: its event is a's
    clock.at += LEASE + 1
    relay_b._valid_until = 0.0  # (b's own lease: renewed at its next sweep)
    await relay_b.publish_pending()
    assert published_b == []  # a's lease ran out, but the event is not a lease old yet
    await store_a.events.update_many({}, {"$set": {"outbox_next_at": _seconds_ago(clock, 60)}})
    await relay_b.publish_pending()
    assert published_b == ["o1:000001"]


async def test_after_a_stall_a_replica_publishes_only_what_was_not_adopted_meanwhile() -> None:
    """It stalled longer than its lease: another replica adopted one of its two events."""
    db, clock = AsyncMongomockDatabase("leases_stall"), Clock()
    store_a, relay_a, published_a = replica(db, "a", clock)
    _, relay_b, published_b = replica(db, "b", clock)
    await relay_a.renew_lease()
    relay_a.wake(await save(store_a, "o1"))
    relay_a._valid_until = 0.0  # the stall: its own clock says the lease is over ...
    clock.at += LEASE + 1  # ... and so does the database's
    await store_a.events.update_one(
        {"_id": "o1:000001"}, {"$set": {"outbox_next_at": _seconds_ago(clock, 60)}}
    )
    await relay_b.publish_pending()  # b adopts o1's event and publishes it
    relay_a.wake(await save(store_a, "o2"))  # saved as the stall ends: still a's
    await relay_a.publish_fresh()
    assert (published_a, published_b) == (["o2:000001"], ["o1:000001"])


async def test_a_second_process_with_the_same_name_neither_renews_nor_releases_the_lease() -> None:
    db, clock = AsyncMongomockDatabase("leases_name"), Clock()
    _, first, _ = replica(db, "host:8000", clock)
    _, second, _ = replica(db, "host:8000", clock)
    assert await first.renew_lease()
    assert not await second.renew_lease()
    assert await second.publish_pending() == 0
    await second.release_lease()
    assert await first.renew_lease()  # still the first's


async def test_a_parked_event_put_back_goes_to_whichever_replica_sweeps_first() -> None:
    db, clock = AsyncMongomockDatabase("leases_parked"), Clock()
    store_a, relay_a, _ = replica(db, "a", clock)
    _, relay_b, published_b = replica(db, "b", clock)
    await relay_a.renew_lease()  # "a" is alive, but the event waits for an operator
    [doc] = await save(store_a, "o1")
    await store_a.events.update_one({"_id": doc["_id"]}, {"$set": {"outbox": "parked"}})
    assert await retry_parked(store_a.events) == 1
    await relay_b.publish_pending()
    assert published_b == ["o1:000001"]


def _seconds_ago(clock: Clock, seconds: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(clock.now() - seconds, UTC)
