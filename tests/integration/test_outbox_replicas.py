"""Two order replicas share one outbox (one ``order_events`` collection): every event must go
out once -- not once per replica that happens to sweep while it is still pending.

Each test provisions a vhost of its own, runs two (or three) real relays against the real broker
and the database, and counts the copies of each event in ``audit.events`` (bound to every event
type). Before each relay kept to its own events, the first test measured 40 events out of 100
published twice (and two whole order services, 31-42)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest
from pymongo import AsyncMongoClient

from services.order.repository import EventStore
from shared.outbox import OutboxRelay, outbox_stats
from shared.testing.system import rabbitmqctl_command
from tests.support.broker_users import Broker, provisioned_vhost
from tests.support.events import order_placed
from tests.support.polling import eventually
from tests.support.relay import relay_as_order

pytestmark = pytest.mark.skipif(
    rabbitmqctl_command() is None, reason="provisioning a vhost needs rabbitmqctl (as root)"
)

EVERY_EVENT = "audit.events"


@pytest.fixture(scope="module")
def broker(rabbit_url: str) -> Iterator[Broker]:
    with provisioned_vhost(rabbit_url, "outbox-replicas") as provisioned:
        yield provisioned


@pytest.fixture
async def database(mongo_client: AsyncMongoClient, run_id: str) -> AsyncIterator[str]:
    name = f"t{run_id}_replicas_{uuid.uuid4().hex[:8]}"
    yield name
    await mongo_client.drop_database(name)


@contextlib.asynccontextmanager
async def replica(
    broker: Broker, client: AsyncMongoClient, database: str, *, lease: float = 15.0
) -> AsyncIterator[tuple[EventStore, OutboxRelay]]:
    """One order replica's event store and relay (sweeping every 50 ms, to make the race with
    the other replica's sweeps as likely as it can be), running in the background."""
    owner = f"replica-{uuid.uuid4().hex[:6]}"
    store = EventStore(client[database], outbox_owner=owner)
    await store.create_indexes()
    options = {"owner": owner, "sweep_interval": 0.05, "lease_seconds": lease}
    async with relay_as_order(broker, store, **options) as relay:
        yield store, relay


async def place(store: EventStore, relay: OutboxRelay | None, count: int) -> list[str]:
    """``count`` orders placed as the order API places them (saved, then handed to the relay,
    if there is one); their event ids."""
    ids = []
    for _ in range(count):
        order_id = str(uuid.uuid4())
        docs = await store.append(order_id, 0, [order_placed(order_id)])
        if relay is not None:
            relay.wake(docs)
        ids.append(docs[0]["envelope"]["id"])
    return ids


async def arrived(broker: Broker, expected: int) -> Counter[str]:
    """Copies per event id in ``audit.events``, once it holds at least ``expected`` and then
    nothing more comes for a moment (a late duplicate would still be counted)."""
    copies: Counter[str] = Counter()
    connection = await aio_pika.connect(broker.operator)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(EVERY_EVENT, passive=True)

        async def take() -> int:
            while (message := await queue.get(fail=False)) is not None:
                copies[str(message.message_id)] += 1
                await message.ack()
            return copies.total()

        await eventually(take, until=lambda n: n >= expected, what=f"{expected} events")
        await asyncio.sleep(0.5)  # ten sweeps of each replica: a late copy would show
        await take()
    return copies


async def test_two_replicas_placing_orders_publish_each_event_once(
    broker: Broker, mongo_client: AsyncMongoClient, database: str
) -> None:
    async with (
        replica(broker, mongo_client, database) as (store_a, relay_a),
        replica(broker, mongo_client, database) as (store_b, relay_b),
    ):
        placed = await asyncio.gather(place(store_a, relay_a, 50), place(store_b, relay_b, 50))
        events = placed[0] + placed[1]
        copies = await arrived(broker, len(events))
        assert (await outbox_stats(store_a.events))["pending"] == 0
    assert set(copies) == set(events)  # nothing lost
    twice = {event: n for event, n in copies.items() if n > 1}
    assert not twice, f"{len(twice)} of {len(events)} events published more than once"


async def test_the_events_of_a_replica_that_died_go_out_once_through_one_survivor(
    broker: Broker, mongo_client: AsyncMongoClient, database: str
) -> None:
    """A replica saves 40 events and dies before its relay publishes them (before it even
    took its lease). Two survivors sweep: once the events are a lease old, exactly one of them
    adopts each."""
    dead = EventStore(mongo_client[database], outbox_owner="replica-that-died")
    orphans = await place(dead, None, 40)
    async with (
        replica(broker, mongo_client, database, lease=1.0) as (_, survivor_a),
        replica(broker, mongo_client, database, lease=1.0) as (_, survivor_b),
    ):
        copies = await arrived(broker, len(orphans))
    assert set(copies) == set(orphans)
    assert all(n == 1 for n in copies.values()), copies.most_common(3)
    adopters = {doc["outbox_owner"] async for doc in dead.events.find({})}
    assert adopters <= {survivor_a.owner, survivor_b.owner}


async def test_events_saved_without_an_owner_are_adopted_and_published_once(
    broker: Broker, mongo_client: AsyncMongoClient, database: str
) -> None:
    """Events an older Warren saved (or ``warren outbox retry`` put back) carry no owner."""
    unowned = await place(EventStore(mongo_client[database]), None, 30)
    async with (
        replica(broker, mongo_client, database),
        replica(broker, mongo_client, database),
    ):
        copies = await arrived(broker, len(unowned))
    assert set(copies) == set(unowned)
    assert all(n == 1 for n in copies.values()), copies.most_common(3)
