"""Queue length limits and push-back, on the real broker: a consumer that stops must not let its
queue grow without bound, and the publisher must hold what the broker refuses -- not lose it.

Each test provisions a vhost of its own with tiny limits (QUEUE_MAX_LENGTH=3), plays the order
service's outbox relay against it with nobody consuming, and counts what arrives where."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager

import aio_pika
import pytest
from pymongo import AsyncMongoClient

from services.order.repository import EventStore
from shared import messaging, topology
from shared.contracts import Envelope, OrderPlaced, StockReserved
from shared.outbox import OutboxRelay, outbox_stats
from shared.rpc import RpcClient, RpcUnavailableError
from shared.settings import WarrenSettings
from shared.testing.system import rabbitmqctl_command
from tests.support.broker_users import Broker, provisioned_vhost
from tests.support.events import order_placed
from tests.support.polling import eventually
from tests.support.relay import relay_as_order as running_relay

pytestmark = pytest.mark.skipif(
    rabbitmqctl_command() is None, reason="provisioning limits needs rabbitmqctl (as root)"
)

LIMIT = 3
WAVE = 2
# order.placed goes to these three queues: one full queue is enough to refuse it.
PLACED_QUEUES = ("inventory.order-placed", "notification.order-events", "audit.events")


@pytest.fixture(scope="module")
def broker(rabbit_url: str) -> Iterator[Broker]:
    with provisioned_vhost(rabbit_url, "backlog", queue_max_length=LIMIT) as provisioned:
        yield provisioned


@pytest.fixture
async def store(mongo_client: AsyncMongoClient, run_id: str) -> AsyncIterator[EventStore]:
    name = f"t{run_id}_backlog_{uuid.uuid4().hex[:8]}"
    store = EventStore(mongo_client[name])
    await store.create_indexes()
    yield store
    await mongo_client.drop_database(name)


def relay_as_order(broker: Broker, store: EventStore) -> AbstractAsyncContextManager[OutboxRelay]:
    """The order service's relay, connected as the order user, running in the background."""
    return running_relay(broker, store, sweep_interval=0.2, max_backoff=1.0)


def settled(relay: OutboxRelay, store: EventStore) -> Callable[[], Awaitable[bool]]:
    """Whether the relay has published all it holds, or is pushed back."""

    async def probe() -> bool:
        return bool(relay.pushed_back()) or (await outbox_stats(store.events))["pending"] == 0

    return probe


async def queue_depth(broker: Broker, name: str) -> int:
    connection = await aio_pika.connect(broker.operator)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


async def drain(broker: Broker, queue: str) -> list[str]:
    """Take every message waiting in ``queue``; their message ids."""
    taken = []
    connection = await aio_pika.connect(broker.operator)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        while (message := await declared.get(fail=False)) is not None:
            taken.append(str(message.message_id))
            await message.ack()
    return taken


async def place(store: EventStore, count: int) -> list[str]:
    """``count`` orders' order.placed, saved pending as the order service saves them; their
    event ids."""
    ids = []
    for _ in range(count):
        order_id = str(uuid.uuid4())
        [doc] = await store.append(order_id, 0, [order_placed(order_id)])
        ids.append(doc["envelope"]["id"])
    return ids


async def test_a_full_queue_pushes_the_relay_back_and_every_event_gets_through_later(
    broker: Broker, store: EventStore
) -> None:
    async with relay_as_order(broker, store) as relay:
        # Nobody consumes. Orders come in twos until the queues are full and the broker nacks
        # (a quorum queue checks its limit as messages arrive: a wave in flight may overshoot).
        events: list[str] = []
        while not relay.pushed_back():
            assert len(events) < 10 * LIMIT, "never pushed back: are the limits provisioned?"
            events += await place(store, WAVE)
            relay.wake()
            await eventually(settled(relay, store), what="the wave published or pushed back")
        held = await place(store, WAVE)  # what comes in meanwhile is held too
        events += held
        stats = await outbox_stats(store.events)
        assert stats["pending"] >= WAVE  # held in the outbox, not dropped
        assert stats["parked"] == 0  # push-back is not the event's fault: nothing parked
        unpublished = [d async for d in store.events.find({"outbox": "pending"})]
        assert all(d.get("outbox_attempts", 0) == 0 for d in unpublished)  # nor counted
        for name in PLACED_QUEUES:
            assert await queue_depth(broker, name) <= LIMIT + WAVE

        # The consumers catch up (here: the test takes what waits); the relay's probe gets
        # through and the rest follows, until the outbox is empty.
        arrived: dict[str, list[str]] = {name: [] for name in PLACED_QUEUES}

        async def catch_up() -> int:
            for name in PLACED_QUEUES:
                arrived[name] += await drain(broker, name)
            return (await outbox_stats(store.events))["pending"]

        await eventually(catch_up, until=lambda pending: pending == 0, timeout=60)
        for name in PLACED_QUEUES:
            arrived[name] += await drain(broker, name)
        assert relay.pushed_back() == 0

    # Nothing lost: every event reached every queue it is bound to.
    for name in PLACED_QUEUES:
        assert set(arrived[name]) == set(events), name
    # A nacked publish still reached the queues that had room: those hold a copy per try.
    # That is what the consumers' idempotency is for; the probe keeps it to a few.
    extra = {name: len(arrived[name]) - len(events) for name in PLACED_QUEUES}
    assert all(0 <= copies <= len(events) for copies in extra.values()), extra


async def test_a_request_to_a_full_queue_is_refused_at_once_not_left_to_time_out(
    broker: Broker,
) -> None:
    """inventory.quotes holds at most its limit of waiting requests: the next caller hears
    "full" from the broker's negative confirm at once (the API answers 503), while the ones
    already waiting are still waiting. (A quorum queue refuses once it is *over* its limit:
    it may take one request more than the limit.)"""
    rpc = RpcClient(broker.url("order"), app_id="order")
    ask = functools.partial(rpc.request, topology.INVENTORY_QUOTES.name, {}, timeout=10.0)
    waiting: list[asyncio.Task[object]] = []
    try:
        while True:  # one more request at a time, until one is refused
            assert len(waiting) <= LIMIT + 1, "the quotes queue took more than its limit"
            waiting.append(asyncio.create_task(ask()))
            depth = await eventually(
                lambda: queue_depth(broker, topology.INVENTORY_QUOTES.name),
                until=lambda depth: depth == len(waiting) or waiting[-1].done(),
                what="the request waiting in the queue, or refused",
            )
            if waiting[-1].done():
                break
        refused = waiting.pop()
        with pytest.raises(RpcUnavailableError, match="is full"):
            await refused
        assert LIMIT <= depth <= LIMIT + 1
        assert not any(task.done() for task in waiting)
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await rpc.close()
        await drain(broker, topology.INVENTORY_QUOTES.name)


async def test_a_retry_coming_back_to_a_full_queue_is_not_lost(broker: Broker) -> None:
    """A failed message waits in a delay queue, then the broker dead-letters it back to its
    queue. Into a full queue that would drop it (a dead letter has no publisher to push back);
    a quorum queue takes it past its limit instead -- measured here, on 3.10 and 4.x alike.
    (At-least-once dead-lettering would hold it in the delay queue until the queue has room,
    but its worker retries only after a confirm timeout of 3 minutes: docs/18-scaling.md.)"""
    queue = topology.PAYMENT_ORDER_CANCELLED.name
    connection = await aio_pika.connect(broker.operator)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        with contextlib.suppress(aio_pika.exceptions.DeliveryError):
            for n in range(2 * LIMIT):  # until the queue refuses
                await channel.default_exchange.publish(
                    aio_pika.Message(b"{}", message_id=f"filler-{n}"), routing_key=queue
                )
        full = await queue_depth(broker, queue)
        assert full >= LIMIT
        retry = await channel.get_exchange(topology.retry_exchange(1).name, ensure=False)
        await retry.publish(aio_pika.Message(b"{}", message_id="the-retry"), routing_key=queue)
        await eventually(lambda: queue_depth(broker, queue), until=lambda depth: depth == full + 1)
    assert "the-retry" in await drain(broker, queue)


async def fill(broker: Broker, queue: str) -> int:
    """Publish into ``queue`` (as the operator, through the default exchange) until it refuses;
    how many it holds."""
    connection = await aio_pika.connect(broker.operator)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        with contextlib.suppress(aio_pika.exceptions.DeliveryError):
            for n in range(4 * LIMIT):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"{}", message_id=f"filler-{n}"), routing_key=queue
                )
    return await queue_depth(broker, queue)


async def test_a_consumer_whose_event_is_refused_waits_without_using_up_its_retries(
    broker: Broker, store: EventStore
) -> None:
    """Inventory handles order.placed and emits stock.reserved, whose queue (payment's) is full.
    The broker nacks; the incoming message goes to a delay queue and comes back -- again and
    again, as long as the queue is full, and never to the DLQ, though one retry is all it has.
    Once payment's queue has room, it is handled: its event published once it got through."""
    [event_id] = await place(store, 1)
    placed = await store.events.find_one({"envelope.id": event_id})
    envelope = Envelope.model_validate(placed["envelope"])
    reserved = Envelope.wrap(
        StockReserved(
            order_id=envelope.correlation_id,
            lines=envelope.data["lines"],
            amount_cents=envelope.data["total_cents"],
            sealed_payment_token=envelope.data["sealed_payment_token"],
        ),
        source="inventory",
    )
    calls: list[str] = []

    async def reserve(incoming: Envelope, _: object) -> list[Envelope]:
        calls.append(incoming.id)
        return [reserved]  # the same event (same id) on every attempt, as inventory does

    full = topology.PAYMENT_STOCK_RESERVED.name
    await fill(broker, full)
    settings = WarrenSettings(rabbit_url=broker.url("inventory"), service_name="inventory")
    inventory = messaging.make_broker(settings)
    messaging.subscribe_events(
        inventory,
        topology.INVENTORY_ORDER_PLACED,
        {OrderPlaced: reserve},
        retry_delays=(1,),  # one retry: a failure that counted would be dead-lettered at once
        identity=messaging.Identity(user="inventory", operators=settings.broker_operators),
    )
    await inventory.start()
    try:
        order = await aio_pika.connect(broker.url("order"))  # as the order service publishes it
        async with order:
            channel = await order.channel(publisher_confirms=True)
            events = await channel.get_exchange(topology.EVENTS.name, ensure=False)
            message = aio_pika.Message(
                envelope.model_dump_json().encode(), message_id=envelope.id, user_id="order"
            )
            await events.publish(message, routing_key="order.placed")
        # Pushed back three times (a second apart), and still not dead-lettered.
        await eventually(lambda: len(calls) >= 3, timeout=30, what="three attempts")
        assert await queue_depth(broker, topology.INVENTORY_ORDER_PLACED.dlq_name) == 0
        fillers = await drain(broker, full)  # payment catches up
        await eventually(
            lambda: queue_depth(broker, full), until=lambda depth: depth >= 1, timeout=30
        )
        assert reserved.id in await drain(broker, full)
        assert all(f.startswith("filler-") for f in fillers)
        assert await queue_depth(broker, topology.INVENTORY_ORDER_PLACED.name) == 0
        assert await queue_depth(broker, topology.INVENTORY_ORDER_PLACED.dlq_name) == 0
    finally:
        await inventory.stop()
