"""An in-memory bus: handler tables wired together as RabbitMQ would route between them.

What it plays: ``shop.events``' routing (an event goes to every queue whose event classes
include it), each queue's consumer (decode, route by event class, call the handler, publish
what it returns), retries (a failed delivery comes back later), poison (dead-lettered with the
reason), and the outbox (a relay's pending events are published before every delivery, by the
relay's own code). Every message crosses it as JSON bytes, as on the wire.

What it does not play -- and the real-broker tests prove: dead-letter exchanges, TTLs, delivery
limits, publisher confirms, crashes, concurrency between processes. Deliveries here run one at
a time, in publication order, or shuffled, or twice each.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import Envelope, PoisonMessageError
from shared.handlers import HandlerTable, bind
from shared.messaging import HeldBackError, Routes, route
from shared.observability import order_context
from shared.outbox import OutboxRelay
from shared.topology import ConsumerQueue

# An early event goes round again while other deliveries are pending; this many rounds and
# the bus gives up on it (its predecessor is not coming: a bug, not a delay).
MAX_HELD_BACK = 1000


@dataclass
class Delivery:
    queue: ConsumerQueue
    body: bytes
    attempts: int = 0
    copy: bool = False  # a duplicate the bus made on purpose
    held_back: int = 0  # early (its predecessor not handled yet): round again, no attempt used


@dataclass
class DeadLetter:
    queue: str
    reason: str


@dataclass
class InMemoryBus:
    # A delivery that keeps failing is dead-lettered after this many attempts. (Retrying costs
    # nothing here, and a shuffled run may deliver a settlement long before its decision.)
    max_attempts: int = 100
    routes: dict[ConsumerQueue, Routes] = field(default_factory=dict)
    pending: list[Delivery] = field(default_factory=list)
    published: list[Envelope] = field(default_factory=list)  # everything that went out
    dead_letters: list[DeadLetter] = field(default_factory=list)
    handled: Counter[str] = field(default_factory=Counter)  # deliveries per queue
    most_attempts: int = 0  # the most attempts one message needed (RabbitMQ gives it 8)
    relays: list[OutboxRelay] = field(default_factory=list)

    def serve(self, table: HandlerTable[Any], deps: Any) -> None:
        """Consume a service's queues with its handler table (as ``Runtime.serve`` does)."""
        self.routes.update(bind(table, deps))

    def outbox(self, relay: OutboxRelay) -> None:
        """Publish what ``relay`` is woken with, by its own code, before every delivery."""
        self.relays.append(relay)

    async def publish_stored(self, doc: dict[str, Any]) -> None:
        """An outbox relay's publish function: the stored envelope, as it was stored."""
        self.publish(Envelope.model_validate(doc["envelope"]))

    def publish(self, envelope: Envelope) -> None:
        """``shop.events``: a copy to every queue bound to the event's type."""
        self.published.append(envelope)
        body = envelope.model_dump_json().encode()
        for queue in self.routes:
            if envelope.type in queue.bound_keys:
                self.pending.append(Delivery(queue, body))

    def send(self, queue: ConsumerQueue, body: bytes) -> None:
        """Put raw bytes straight on one queue (as the default exchange would)."""
        self.pending.append(Delivery(queue, body))

    async def drain(self, *, shuffle: random.Random | None = None, twice: bool = False) -> int:
        """Deliver until nothing is pending; returns how many deliveries ran.

        ``shuffle`` picks the next delivery at random; ``twice`` delivers every message a
        second time, later (a redelivery, a replay).
        """
        deliveries = 0
        while True:
            for relay in self.relays:
                await relay.publish_fresh()
            if not self.pending:
                return deliveries
            index = shuffle.randrange(len(self.pending)) if shuffle else 0
            delivery = self.pending.pop(index)
            if twice and not delivery.copy and delivery.attempts == 0:
                self.pending.append(Delivery(delivery.queue, delivery.body, copy=True))
            await self.deliver(delivery)
            deliveries += 1

    async def deliver(self, delivery: Delivery) -> None:
        """One delivery, with the consumer's rules: poison out, failures back in the queue."""
        queue = delivery.queue
        self.handled[queue.name] += 1
        try:
            envelope, payload, handler = route(self.routes[queue], queue, delivery.body)
        except PoisonMessageError as exc:
            self.dead_letters.append(DeadLetter(queue.name, f"poison: {exc}"))
            return
        delivery.attempts += 1
        self.most_attempts = max(self.most_attempts, delivery.attempts)
        try:
            with order_context(envelope.correlation_id):
                outcome = await handler(envelope, payload)
        except PoisonMessageError as exc:  # the handler says no retry can help
            self.dead_letters.append(DeadLetter(queue.name, f"poison: {exc}"))
            return
        except HeldBackError as exc:
            delivery.attempts -= 1  # as the consumer: waiting is not failing
            delivery.held_back += 1
            if delivery.held_back > MAX_HELD_BACK:  # its predecessor will never come
                self.dead_letters.append(DeadLetter(queue.name, f"held back for ever: {exc}"))
            else:
                self.pending.append(delivery)
            return
        except Exception as exc:
            if delivery.attempts >= self.max_attempts or not queue.retried:
                self.dead_letters.append(DeadLetter(queue.name, repr(exc)))
            else:
                self.pending.append(delivery)  # retried after what is pending now
            return
        for event in outcome:
            self.publish(event)
