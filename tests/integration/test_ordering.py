"""Per-key order on the real broker: a consistent-hash exchange over partition queues with a
single active consumer each, and the sequencer that puts each order's events back in order.

Each test has a vhost of its own (rabbitmqctl, as root), and needs the consistent-hash plugin
(scripts/ensure-rabbitmq.sh and scripts/rabbitmq4.sh enable it). The consumers are aio-pika
connections of their own, as separate processes would be: closing one is a consumer dying.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import AMQPError
from faststream.rabbit import RabbitBroker

from shared import topology
from shared.contracts import Envelope
from shared.messaging import publish_event
from shared.ordering import (
    Gap,
    InMemorySequenceStore,
    Outcome,
    Partitions,
    Released,
    Sequencer,
    declare_partitions,
)
from shared.testing.system import rabbitmqctl_command
from tests.support.broker_users import ctl
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

KEYS = [f"order-{n:02d}" for n in range(20)]
EVENTS_PER_KEY = 10
# Far above what any test holds back by design: only a real hole is a gap.
PREFETCH = 200


@pytest.fixture
async def vhost_url(rabbit_url: str) -> AsyncIterator[str]:
    """The broker URL on a vhost of this test's own, deleted afterwards."""
    if rabbitmqctl_command() is None:
        pytest.skip("a vhost of the test's own needs rabbitmqctl (as root)")
    vhost = f"ordering-{uuid.uuid4().hex[:8]}"
    address = urlsplit(rabbit_url)
    ctl("add_vhost", vhost)
    try:
        ctl("set_permissions", "-p", vhost, address.username or "guest", ".*", ".*", ".*")
        yield address._replace(path=f"/{vhost}").geturl()
    finally:
        ctl("delete_vhost", vhost)


async def declared(url: str, partitions: Partitions) -> Partitions:
    broker = RabbitBroker(url)
    await broker.connect()
    try:
        await declare_partitions(broker, partitions)
    except AMQPError as exc:
        if "x-consistent-hash" in str(exc):
            pytest.skip(f"rabbitmq_consistent_hash_exchange is not enabled: {exc}")
        raise
    finally:
        await broker.stop()
    return partitions


def event(key: str, sequence: int) -> Envelope:
    # The routing key (the type) differs at every step: a key staying on one partition shows
    # the exchange hashes the correlation id, not the routing key.
    return Envelope(
        id=f"{key}:{sequence}",
        type=f"order.step-{sequence}",
        source="order",
        correlation_id=key,
        sequence=sequence,
        data={"order_id": key},
    )


async def publish(url: str, envelopes: Iterable[Envelope]) -> None:
    """Through shop.events, as Warren publishes: the correlation id is the order id."""
    broker = RabbitBroker(url)
    await broker.connect()
    try:
        for envelope in envelopes:
            await publish_event(broker, envelope)
    finally:
        await broker.stop()


def shuffled_with_copies(envelopes: list[Envelope], copies: int, seed: int) -> list[Envelope]:
    rng = random.Random(seed)
    stream = envelopes + rng.sample(envelopes, copies)
    rng.shuffle(stream)
    return stream


@dataclass
class Ledger:
    """What every consumer did, shared as a database would be."""

    store: InMemorySequenceStore = field(default_factory=InMemorySequenceStore)
    applied: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    duplicates: int = 0
    late: list[tuple[str, int]] = field(default_factory=list)
    gaps: list[tuple[Gap, float]] = field(default_factory=list)
    # queue -> the consumer of each delivery, in order; key -> the queues it came through.
    consumers_of: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    queues_of: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def count(self) -> int:
        return sum(len(applied) for applied in self.applied.values())


@dataclass(frozen=True)
class Delivery:
    key: str
    sequence: int
    message: AbstractIncomingMessage


class OrderedConsumer:
    """One consumer process: its own connection, every partition subscribed (one active
    consumer each), and a sequencer of its own applying each key's events in order."""

    def __init__(self, name: str, url: str, ledger: Ledger, sequencer: Sequencer[Delivery]) -> None:
        self.name, self.url, self.ledger, self.sequencer = name, url, ledger, sequencer
        self.received: list[tuple[str, int, bool]] = []  # key, sequence, redelivered
        self.fail_once: set[tuple[str, int]] = set()  # retried through the delay queue
        self.dead = False

    async def start(self, queue_names: Iterable[str]) -> OrderedConsumer:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=PREFETCH)
        for name in queue_names:
            queue = await self.channel.get_queue(name)
            await queue.consume(partial(self.on_message, name))
        self.ticker = asyncio.create_task(self.tick())
        return self

    async def die(self) -> None:
        """As a crashed process: nothing more is done, the broker takes back what it held."""
        self.dead = True
        self.ticker.cancel()
        await self.connection.close()

    async def on_message(self, queue_name: str, message: AbstractIncomingMessage) -> None:
        envelope = Envelope.model_validate_json(message.body)
        key, sequence = envelope.correlation_id, envelope.sequence
        if self.dead:
            return
        self.received.append((key, sequence, bool(message.redelivered)))
        self.ledger.consumers_of[queue_name].append(self.name)
        self.ledger.queues_of[key].add(queue_name)
        if (key, sequence) in self.fail_once:
            self.fail_once.discard((key, sequence))
            return await self.retry_later(queue_name, message)
        if not self.sequencer.knows(key):
            self.sequencer.resume(key, await self.ledger.store.load(key))
        if self.dead:
            return
        offered = self.sequencer.offer(key, sequence, Delivery(key, sequence, message))
        if offered.outcome is Outcome.DUPLICATE:
            self.ledger.duplicates += 1
            await self.ack(message)
        elif offered.outcome is Outcome.LATE:
            self.ledger.late.append((key, sequence))  # a service dead-letters it
            await self.ack(message)
        await self.settle(offered)

    async def settle(self, released: Released[Delivery]) -> None:
        """Apply, save how far each key got, then ack (a crash before the ack redelivers what
        was applied: the saved state makes it a duplicate)."""
        for delivery in released.ready:
            self.ledger.applied[delivery.key].append(delivery.sequence)
        for key in {delivery.key for delivery in released.ready}:
            await self.ledger.store.save(key, self.sequencer.state(key))
        self.ledger.gaps += [(gap, time.monotonic()) for gap in released.gaps]
        for delivery in released.ready:
            await self.ack(delivery.message)

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            await self.settle(self.sequencer.expire())

    async def ack(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.ack()
        except Exception:
            assert self.dead  # only a dead consumer's channel is gone

    async def retry_later(self, queue_name: str, message: AbstractIncomingMessage) -> None:
        """What Warren's consumers do on a transient failure: a copy to a delay queue, which
        comes back to the queue through shop.requeue; then ack."""
        copy = aio_pika.Message(
            message.body, correlation_id=message.correlation_id, message_id=message.message_id
        )
        delay = await self.channel.get_exchange(topology.retry_exchange(1).name)
        await delay.publish(copy, routing_key=queue_name)
        await message.ack()


def runs(consumers: list[str]) -> list[str]:
    """Who delivered, run by run: [a, a, b, b] -> [a, b]."""
    return [name for i, name in enumerate(consumers) if i == 0 or consumers[i - 1] != name]


def one_active_consumer_at_a_time(ledger: Ledger) -> dict[str, list[str]]:
    handed_over = {queue: runs(consumers) for queue, consumers in ledger.consumers_of.items()}
    for queue, order in handed_over.items():
        assert len(order) == len(set(order)), f"{queue}: consumers interleaved: {order}"
    return handed_over


async def test_shuffled_and_duplicated_streams_are_applied_in_order_once(vhost_url: str) -> None:
    partitions = await declared(vhost_url, Partitions("ordering.test", ("order.*",), count=4))
    ledger = Ledger()
    a = OrderedConsumer("a", vhost_url, ledger, Sequencer(max_held=EVENTS_PER_KEY))
    b = OrderedConsumer("b", vhost_url, ledger, Sequencer(max_held=EVENTS_PER_KEY))
    # Both at once, b in the other order: which consumer is active where is up to the broker.
    await asyncio.gather(a.start(partitions.queue_names), b.start(reversed(partitions.queue_names)))
    try:
        events = [event(key, n) for key in KEYS for n in range(1, EVENTS_PER_KEY + 1)]
        await publish(vhost_url, shuffled_with_copies(events, copies=40, seed=1))
        await eventually(
            lambda: (ledger.count(), ledger.duplicates),
            until=lambda counts: counts == (len(events), 40),
            what="every event applied and every copy recognised",
        )
        assert ledger.applied == {key: list(range(1, EVENTS_PER_KEY + 1)) for key in KEYS}
        assert ledger.gaps == [] and ledger.late == []
        # Every event of a key went through one partition, whatever its routing key.
        assert all(len(queues) == 1 for queues in ledger.queues_of.values())
        assert len(ledger.consumers_of) > 1  # the keys spread over partitions
        for queue, order in one_active_consumer_at_a_time(ledger).items():
            assert len(order) == 1, f"{queue}: handed over with nobody leaving: {order}"
    finally:
        await a.die()
        await b.die()


async def test_order_holds_when_a_consumer_joins_and_the_active_one_dies(vhost_url: str) -> None:
    partitions = await declared(vhost_url, Partitions("ordering.test", ("order.*",), count=4))
    ledger = Ledger()
    a = await OrderedConsumer("a", vhost_url, ledger, Sequencer()).start(partitions.queue_names)
    b = await OrderedConsumer("b", vhost_url, ledger, Sequencer()).start(partitions.queue_names)
    rng = random.Random(2)
    events = [event(key, n) for key in KEYS for n in range(1, EVENTS_PER_KEY + 1)]
    first = rng.sample(events, len(events) // 2)
    rest = [envelope for envelope in events if envelope not in first]
    c = None
    try:
        await publish(vhost_url, shuffled_with_copies(first, copies=20, seed=3))
        await eventually(lambda: len(a.received), until=lambda n: n == len(first) + 20)
        assert b.received == []  # a registered first everywhere: b waits
        held = a.sequencer.held
        assert held > 0  # a dies holding early events, unacked
        c = await OrderedConsumer("c", vhost_url, ledger, Sequencer()).start(partitions.queue_names)
        await a.die()
        await publish(vhost_url, shuffled_with_copies(rest, copies=20, seed=4))
        await eventually(ledger.count, until=lambda n: n == len(events), what="every event applied")
        assert ledger.applied == {key: list(range(1, EVENTS_PER_KEY + 1)) for key in KEYS}
        assert ledger.gaps == [] and ledger.late == []
        one_active_consumer_at_a_time(ledger)
        # What a held came back to the next active consumer, redelivered.
        taken_over = [delivery for delivery in b.received + c.received if delivery[2]]
        assert len(taken_over) >= held
    finally:
        for consumer in (a, b, c):
            if consumer is not None and not consumer.dead:
                await consumer.die()


async def test_the_next_consumer_gets_what_the_dead_one_held_before_anything_newer(
    vhost_url: str,
) -> None:
    partitions = await declared(vhost_url, Partitions("ordering.one", ("order.*",), count=1))
    (queue_name,) = partitions.queue_names
    connection = await aio_pika.connect(vhost_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=5)  # a consumer stuck on five messages, unacked
    stuck: list[int] = []

    async def never_ack(message: AbstractIncomingMessage) -> None:
        stuck.append(Envelope.model_validate_json(message.body).sequence)

    await (await channel.get_queue(queue_name)).consume(never_ack)
    ledger = Ledger()
    b = await OrderedConsumer("b", vhost_url, ledger, Sequencer()).start([queue_name])
    try:
        await publish(vhost_url, [event("order-wile", n) for n in range(1, 21)])
        await eventually(lambda: stuck, until=lambda got: got == [1, 2, 3, 4, 5])
        await connection.close()
        await eventually(ledger.count, until=lambda n: n == 20, what="the stream applied")
        # In queue order, what the dead consumer held (redelivered) first: no hold-back needed.
        assert b.received == [("order-wile", n, n <= 5) for n in range(1, 21)], (
            "the hand-over put newer events before the held ones"
        )
        assert b.sequencer.held == 0 and ledger.duplicates == 0
    finally:
        await b.die()


async def test_a_missing_sequence_number_is_reported_as_a_gap_not_skipped(
    vhost_url: str,
) -> None:
    partitions = await declared(vhost_url, Partitions("ordering.test", ("order.*",), count=4))
    ledger = Ledger()
    # Long enough that the whole keys, shuffled, never wait that long for a predecessor while
    # the batch is published (one confirm each) on a loaded machine.
    max_wait = 5.0
    consumers = [
        await OrderedConsumer(name, vhost_url, ledger, Sequencer(max_wait=max_wait)).start(
            partitions.queue_names
        )
        for name in ("a", "b")
    ]
    try:
        holed = [event("order-gap", n) for n in range(1, EVENTS_PER_KEY + 1) if n != 4]
        whole = [event(key, n) for key in KEYS[:3] for n in range(1, EVENTS_PER_KEY + 1)]
        await publish(vhost_url, shuffled_with_copies(holed + whole, copies=5, seed=5))
        published = time.monotonic()
        await eventually(lambda: ledger.gaps, what="the gap reported", timeout=max_wait + 5)
        [(gap, reported)] = ledger.gaps
        assert gap == Gap("order-gap", 4, 5, "held back longer than 5s")
        assert reported - published < max_wait + 2.0  # within the bound, give or take a tick
        assert ledger.applied["order-gap"] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
        await eventually(ledger.count, until=lambda n: n == len(holed) + len(whole))
        # The missing event turns up after all: late, reported, not applied out of order.
        await publish(vhost_url, [event("order-gap", 4)])
        await eventually(lambda: ledger.late, until=lambda late: late == [("order-gap", 4)])
        assert ledger.applied["order-gap"] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    finally:
        for consumer in consumers:
            await consumer.die()


async def test_a_retried_event_comes_back_behind_newer_ones_and_is_held_for(
    vhost_url: str,
) -> None:
    partitions = await declared(vhost_url, Partitions("ordering.one", ("order.*",), count=1))
    (queue_name,) = partitions.queue_names
    # What a consumer queue with retries has: a 1 s delay queue that returns to the queue.
    broker = RabbitBroker(vhost_url)
    await broker.connect()
    try:
        requeue = await broker.declare_exchange(topology.REQUEUE)
        delay = await broker.declare_exchange(topology.retry_exchange(1))
        await (await broker.declare_queue(topology.retry_queue(1))).bind(delay, routing_key="")
        partition = await broker.declare_queue(partitions.queue(queue_name))
        await partition.bind(requeue, routing_key=queue_name)
    finally:
        await broker.stop()
    ledger = Ledger()
    consumer = OrderedConsumer("a", vhost_url, ledger, Sequencer(max_wait=10.0))
    consumer.fail_once = {("order-road", 2)}
    # All queued first: the copy of 2 comes back after 3..10 however slowly they were published.
    await publish(vhost_url, [event("order-road", n) for n in range(1, 11)])
    await consumer.start([queue_name])
    try:
        await eventually(ledger.count, until=lambda n: n == 10, what="the stream applied")
        arrived = [sequence for _, sequence, _ in consumer.received]
        assert arrived == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 2]  # the copy came back last
        assert ledger.applied == {"order-road": list(range(1, 11))}  # 3..10 waited for it
        assert ledger.gaps == []
    finally:
        await consumer.die()
