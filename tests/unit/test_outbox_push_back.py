"""The outbox relay under push-back, in process: a publisher that stands for a queue with room
for N more events, nacking the rest (as RabbitMQ's reject-publish does). The real broker's part
is in tests/integration/test_backlog.py; this counts every try."""

from __future__ import annotations

from typing import Any

from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic

from services.order.repository import EventStore
from shared.outbox import OutboxRelay, outbox_stats
from shared.testing.memory_mongo import AsyncMongomockDatabase
from tests.support.events import order_placed


class FullQueue:
    """Takes ``room`` events, nacks the others; counts every try per event."""

    def __init__(self) -> None:
        self.room = 0
        self.tries: dict[str, int] = {}
        self.taken: list[str] = []

    async def __call__(self, doc: dict[str, Any]) -> None:
        self.tries[doc["_id"]] = self.tries.get(doc["_id"], 0) + 1
        if self.room <= 0:
            raise DeliveryError(None, Basic.Nack(delivery_tag=1))
        self.room -= 1
        self.taken.append(doc["_id"])


async def saved(count: int) -> EventStore:
    store = EventStore(AsyncMongomockDatabase("push_back"))
    await store.create_indexes()
    for n in range(count):
        await store.append(f"o{n:03}", 0, [order_placed(f"o{n:03}")])
    return store


async def test_after_push_back_the_relay_probes_with_one_then_doubles_back_to_a_batch() -> None:
    store, queue = await saved(40), FullQueue()
    relay = OutboxRelay(store.events, queue, batch_size=16)

    await relay.publish_pending()  # the queue is full: refused, the round stops
    assert relay.pushed_back() > 0
    first_round = sum(queue.tries.values())
    await relay.publish_pending()  # still full: one event tries, no more
    assert sum(queue.tries.values()) == first_round + 1

    queue.room = 1000  # the consumers caught up
    sizes = []
    while (await outbox_stats(store.events))["pending"]:
        before = len(queue.taken)
        await relay.publish_pending()
        sizes.append(len(queue.taken) - before)
    assert sizes[:5] == [1, 2, 4, 8, 16]  # one, then doubling, back to a whole batch
    assert (
        sorted(queue.taken) == sorted(f"o{n:03}:1" for n in range(40))
        or len(set(queue.taken)) == 40
    )
    assert relay.pushed_back() == 0
    # Nothing parked, nothing counted: push-back is not the events' fault.
    stats = await outbox_stats(store.events)
    assert (stats["pending"], stats["parked"]) == (0, 0)


async def test_a_refused_round_stops_at_the_first_refusal() -> None:
    """Twenty orders' events in one sweep, the queue full: the relay does not try them all
    (each try would still copy the event into its other queues)."""
    store, queue = await saved(20), FullQueue()
    relay = OutboxRelay(store.events, queue)
    await relay.publish_pending()
    assert sum(queue.tries.values()) == 1
