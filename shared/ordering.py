"""Keeping per-key order: partitions by order id, and a sequencer that puts a key's events back
in order. The notification service keeps an order's emails in order with :func:`position` and
:func:`skip_to`, and can take its order events through partitions
(:class:`shared.topology.PartitionedQueue`, which retries like any consumer queue). The
:class:`Partitions` here (no retries) and the :class:`Sequencer` (events held in memory) are
the building blocks for a consumer that must hold events itself (docs/17-keeping-order.md).

RabbitMQ keeps a queue's order for one consumer, and loses it as soon as several compete, a
message is retried through a delay queue (it comes back behind newer ones), or a publisher's
events overtake each other. Two ways to get order back, per key (the order id):

* **Partitions** (:class:`Partitions`, :func:`declare_partitions`): a consistent-hash exchange
  (``x-consistent-hash``, plugin ``rabbitmq_consistent_hash_exchange``) hashes each message's
  AMQP ``correlation_id`` -- the order id, set by :func:`shared.messaging.publish_event` -- onto
  one of N quorum queues ``<name>.p<i>``, each with a single active consumer. Every event of an
  order lands in one partition and is handled by one consumer at a time, in queue order;
  different orders are handled in parallel, up to N at a time. Start as many consumers as you
  like: one per partition is active, the others wait and take over when it goes.
* **Sequence numbers** (:class:`Sequencer`): the consumer checks each event's position in its
  key's stream, applies it if it is the next one, holds it back if it is early, and tells a
  duplicate from a gap. Pure: no I/O, no clock of its own (one is injected).

Partitions alone are not enough when anything re-queues a message behind newer ones (a retry
through the delay queues does), nor when the events are published out of order; the sequencer
alone needs every event of a key to reach the same consumer to hold them back for each other.
Together: partitions bring a key's events to one consumer, the sequencer puts them in order.

**What an item must follow.** By default an item with sequence ``n`` follows ``n - 1``: the
stream is contiguous from 1. A subscriber may see a sparse stream: the order service numbers
every event it stores, internal ones too (``order.stock-reserved`` is never published), so a
subscriber to ``order.*`` sees 1, 3, 4... and would wait for 2 for ever. So an item may name its
predecessor (``previous``): the sequence of the event it must follow, 0 for a stream's first.
Only the publisher knows it (the last event it *published* for the key). An item is applicable
when ``previous <= last applied < sequence``; for a contiguous stream that is "the next one".

**A gap is reported, then skipped.** An item whose predecessor has not come is held back, at
most ``max_held`` per key and for at most ``max_wait`` seconds (the oldest one held). Past
either bound the sequencer gives up on the missing ones: it returns a :class:`Gap` (key, the
first sequence expected, the one got) and applies what was held, in order, from the lowest on.
Why skip rather than block the key: an event held back is an unacked delivery (the next
paragraph), and a key blocked for ever would hold its consumer's prefetch for ever. The gap is
never silent: the caller logs it and counts it, and one of the missing events that turns up
after all is ``LATE`` (dead-letter it, for an operator), not a duplicate.

**Held back means unacked.** The caller keeps an early message unacked until it is applied:
if the consumer dies, the broker hands its unacked messages to the next active consumer,
before anything newer (measured on RabbitMQ 3.10 and 4.0: docs/17-keeping-order.md). So a
consumer's prefetch must exceed what it may hold (``max_held`` x the keys in flight), or its
deliveries stop until ``max_wait`` declares a gap. And ``max_wait`` must exceed the longest
retry delay, if retries go through the delay queues.

**One sequencer per channel.** What a sequencer holds belongs to one channel's deliveries:
when the channel goes, they go back to the queue, so a new channel starts a new sequencer,
which :meth:`Sequencer.resume` seeds from the saved state (:class:`SequenceStore`: MongoDB in a
service). Apply a key's ready items one at a time, in the order returned (a handler that awaits
must not run concurrently with another for the same key), then save the state, then ack them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from faststream.rabbit import RabbitExchange, RabbitQueue

from shared import topology

# --- partitions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partitions:
    """N quorum queues ``<name>.p<i>`` behind a consistent-hash exchange ``<name>``, which is
    bound to ``source`` by ``routing_keys``: each message goes to one partition, chosen by its
    ``correlation_id``; each partition has one active consumer at a time.

    No retries through the delay queues: a copy that came back would be behind newer events
    (docs/17-keeping-order.md). A message that kills its consumer every time is dead-lettered
    after :data:`topology.DELIVERY_LIMIT` deliveries -- a hand-over (its consumer died) counts
    as one, for every message the consumer held -- into one DLQ, ``<name>.dlq``.
    """

    name: str
    routing_keys: tuple[str, ...]  # patterns on ``source``: ("order.*",)
    count: int = 4
    source: RabbitExchange = topology.EVENTS

    # --8<-- [start:partitions]
    @property
    def exchange(self) -> RabbitExchange:
        """The consistent-hash exchange, hashing each message's ``correlation_id``."""
        return topology.consistent_hash_exchange(self.name)

    @property
    def queue_names(self) -> tuple[str, ...]:
        """``<name>.p0`` ... ``<name>.p<count - 1>``."""
        return tuple(f"{self.name}.p{index}" for index in range(self.count))

    @property
    def queues(self) -> tuple[RabbitQueue, ...]:
        """Every partition queue."""
        return tuple(self.queue(name) for name in self.queue_names)

    def queue(self, name: str) -> RabbitQueue:
        """One partition queue, as every consumer of it must declare it: a quorum queue with a
        single active consumer, dead-lettering under its own name -- the topology's partition."""
        return topology.ConsumerQueue(name, events=(), partition_of=self.name).queue
        # --8<-- [end:partitions]

    @property
    def dlq(self) -> RabbitQueue:
        """Where every partition dead-letters, ``<name>.dlq``."""
        # A quorum queue, like the consumer queues' DLQs (shared/topology.py says why).
        return topology.dead_letter_queue(f"{self.name}.dlq")


async def declare_partitions(broker: Any, partitions: Partitions, *, shared: bool = True) -> None:
    """Declare the consistent-hash exchange, its bindings from the source exchange, the
    partition queues and their DLQ (idempotent). ``broker`` is a connected RabbitBroker.

    ``shared=False``: the source and dead-letter exchanges exist already (a service's own user
    may not declare them): they are only checked. Needs ``rabbitmq_consistent_hash_exchange``:
    without it the broker refuses the exchange type (``COMMAND_INVALID``)."""

    def exchange(declared: RabbitExchange) -> RabbitExchange:
        return declared if shared else topology.existing(declared)

    source = await broker.declare_exchange(exchange(partitions.source))
    dead_letter = await broker.declare_exchange(exchange(topology.DEAD_LETTER))
    hashed = await broker.declare_exchange(partitions.exchange)
    for key in partitions.routing_keys:
        await hashed.bind(source, routing_key=key)  # exchange-to-exchange: source -> hashed
    dlq = await broker.declare_queue(partitions.dlq)
    for queue in partitions.queues:
        declared = await broker.declare_queue(queue)
        await declared.bind(hashed, routing_key=topology.PARTITION_WEIGHT)
        await dlq.bind(dead_letter, routing_key=queue.name)


# --- the sequencer ---------------------------------------------------------------------------

Item = TypeVar("Item")


@dataclass(frozen=True)
class Gap:
    """Sequences ``expected`` up to (not including) ``got`` of ``key`` never came within the
    bound: the sequencer applied what it held without them. ``reason``: which bound."""

    key: str
    expected: int
    got: int
    reason: str

    @property
    def missing(self) -> range:
        """What was given up on. In a sparse stream, some of these never existed."""
        return range(self.expected, self.got)


@dataclass(frozen=True)
class KeyState:
    """How far a key's stream has been applied: what a service saves between deliveries."""

    last_applied: int = 0
    # The ranges given up on as gaps, [low, high): an item in one that arrives after all is
    # late, not a duplicate.
    skipped: tuple[tuple[int, int], ...] = ()

    def was_skipped(self, sequence: int) -> bool:
        """Whether ``sequence`` lies in a range given up on as a gap."""
        return any(low <= sequence < high for low, high in self.skipped)


class Outcome(StrEnum):
    """What became of an offered item."""

    READY = "ready"  # applicable now: it is in ``ready``
    HELD = "held"  # early: held back until its predecessor comes (or a gap is declared)
    DUPLICATE = "duplicate"  # applied or held already: ack it, do nothing
    LATE = "late"  # given up on in a gap, arrived after all: dead-letter it, do not apply


# --8<-- [start:position]
def position(state: KeyState, sequence: int, previous: int | None = None) -> Outcome:
    """Where item ``sequence`` (which must follow ``previous``, default ``sequence - 1``) stands
    against a key's saved state, for a consumer that holds nothing back itself but sends an
    early message round again (a delay queue) until its predecessor is applied: ``READY``,
    ``HELD`` (early), ``DUPLICATE`` or ``LATE`` (given up on in a gap, come after all)."""
    previous = sequence - 1 if previous is None else previous
    if not 0 <= previous < sequence:
        raise ValueError(f"sequence {sequence} cannot follow {previous}")
    if sequence <= state.last_applied:
        return Outcome.LATE if state.was_skipped(sequence) else Outcome.DUPLICATE
    return Outcome.READY if previous <= state.last_applied else Outcome.HELD
    # --8<-- [end:position]


def skip_to(key: str, state: KeyState, sequence: int, reason: str) -> tuple[KeyState, Gap]:
    """Give up waiting for what comes before ``sequence`` of ``key``: the state that applies
    it next, and the gap to report."""
    gap = Gap(key, state.last_applied + 1, sequence, reason)
    skipped = (*state.skipped, (gap.expected, sequence))
    return KeyState(last_applied=sequence - 1, skipped=skipped), gap


@dataclass(frozen=True)
class Released(Generic[Item]):
    """Items to apply now, in this order, and the gaps declared to release them."""

    ready: tuple[Item, ...] = ()
    gaps: tuple[Gap, ...] = ()


@dataclass(frozen=True)
class Offered(Released[Item]):
    """What :meth:`Sequencer.offer` decided: the offered item's outcome, and what to apply."""

    outcome: Outcome = Outcome.READY


@dataclass
class _Held(Generic[Item]):
    item: Item
    previous: int
    since: float


@dataclass
class _Key(Generic[Item]):
    state: KeyState = field(default_factory=KeyState)
    held: dict[int, _Held[Item]] = field(default_factory=dict)  # by sequence


class Sequencer(Generic[Item]):
    """Per key, the next applicable item: offer items in any order, apply what comes back.

    ``max_held``: the most items held back for one key; ``max_wait``: the longest, in seconds
    of ``clock``, that one may wait. Past either a :class:`Gap` is declared (the module's
    docstring says why skipping, and why reported)."""

    def __init__(
        self,
        *,
        max_held: int = 16,
        max_wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_held < 1 or max_wait <= 0:
            raise ValueError("max_held must be at least 1 and max_wait positive")
        self.max_held, self.max_wait, self.clock = max_held, max_wait, clock
        self._keys: dict[str, _Key[Item]] = {}

    def knows(self, key: str) -> bool:
        """Whether ``key`` is tracked here (else :meth:`resume` it from the saved state)."""
        return key in self._keys

    def resume(self, key: str, state: KeyState) -> None:
        """Start tracking ``key`` from a saved state -- unless it is tracked already, whose
        state here is newer than any saved one."""
        self._keys.setdefault(key, _Key(state))

    def state(self, key: str) -> KeyState:
        """``key``'s state, to save once its ready items are applied."""
        return self._keys[key].state if key in self._keys else KeyState()

    def forget(self, key: str) -> bool:
        """Stop tracking ``key`` (its stream is over, or to bound memory) -- only if nothing of
        it is held back. Returns whether it was forgotten."""
        tracked = self._keys.get(key)
        if tracked is None or tracked.held:
            return False
        del self._keys[key]
        return True

    @property
    def held(self) -> int:
        """How many items are held back, over every key."""
        return sum(len(tracked.held) for tracked in self._keys.values())

    def offer(
        self, key: str, sequence: int, item: Item, previous: int | None = None
    ) -> Offered[Item]:
        """Offer ``item``, number ``sequence`` of ``key``'s stream, which must follow
        ``previous`` (default ``sequence - 1``). Returns its outcome, and the items now
        applicable in order: itself and any held-back successors -- or, past a bound, what
        was held, released by a gap."""
        previous = sequence - 1 if previous is None else previous
        tracked = self._keys.setdefault(key, _Key())
        where = position(tracked.state, sequence, previous)
        if where in (Outcome.LATE, Outcome.DUPLICATE):
            return Offered(outcome=where)
        if sequence in tracked.held:
            return Offered(outcome=Outcome.DUPLICATE)
        tracked.held[sequence] = _Held(item, previous, self.clock())
        ready = self._drain(tracked)
        released = self._give_up_if_overdue(key, tracked)
        outcome = Outcome.HELD if sequence in tracked.held else Outcome.READY
        return Offered(ready + released.ready, released.gaps, outcome)

    def expire(self) -> Released[Item]:
        """Declare a gap for every key whose oldest held item waited past ``max_wait``: call it
        now and then (a timer), as no offer may come to release them."""
        ready: tuple[Item, ...] = ()
        gaps: tuple[Gap, ...] = ()
        for key, tracked in self._keys.items():
            released = self._give_up_if_overdue(key, tracked)
            ready, gaps = ready + released.ready, gaps + released.gaps
        return Released(ready, gaps)

    def _drain(self, tracked: _Key[Item]) -> tuple[Item, ...]:
        """Pop the held items that are applicable, lowest first, advancing the state."""
        ready: list[Item] = []
        while tracked.held:
            lowest = min(tracked.held)
            if tracked.held[lowest].previous > tracked.state.last_applied:
                break
            ready.append(tracked.held.pop(lowest).item)
            tracked.state = replace(tracked.state, last_applied=lowest)
        return tuple(ready)

    def _give_up_if_overdue(self, key: str, tracked: _Key[Item]) -> Released[Item]:
        """Past a bound, skip to the lowest held item and apply from there; repeat while the
        rest is still past a bound (another hole behind it)."""
        ready: tuple[Item, ...] = ()
        gaps: tuple[Gap, ...] = ()
        while reason := self._overdue(tracked):
            tracked.state, gap = skip_to(key, tracked.state, min(tracked.held), reason)
            # Its predecessor (< got) is applied or given up on now: it drains first.
            ready, gaps = ready + self._drain(tracked), (*gaps, gap)
        return Released(ready, gaps)

    def _overdue(self, tracked: _Key[Item]) -> str | None:
        """Which bound the key's held items are past, if any."""
        if len(tracked.held) > self.max_held:
            return f"more than {self.max_held} held back"
        if tracked.held:
            waited = self.clock() - min(held.since for held in tracked.held.values())
            if waited > self.max_wait:
                return f"held back longer than {self.max_wait:g}s"
        return None


# --- saved state -----------------------------------------------------------------------------


class SequenceStore(Protocol):
    """Where a service keeps each key's :class:`KeyState` between deliveries and consumers
    (MongoDB in a service, one document per key)."""

    async def load(self, key: str) -> KeyState:
        """The saved state of ``key``; ``KeyState()`` if none."""
        ...

    async def save(self, key: str, state: KeyState) -> None:
        """Save ``state`` unless the saved one is further on: a consumer that has lost its
        partition may still be finishing, and must not move a key backwards."""
        ...


class InMemorySequenceStore:
    """A :class:`SequenceStore` in a dict: for tests, and for consumers that share a process."""

    def __init__(self) -> None:
        self.states: dict[str, KeyState] = {}

    async def load(self, key: str) -> KeyState:
        """The saved state of ``key``; ``KeyState()`` if none."""
        return self.states.get(key, KeyState())

    async def save(self, key: str, state: KeyState) -> None:
        """Save ``state`` unless the saved one is further on."""
        saved = self.states.get(key)
        if saved is None or state.last_applied >= saved.last_applied:
            self.states[key] = state
