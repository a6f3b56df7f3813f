"""The outbox relay: publishes events that were saved with ``outbox: "pending"``.

A service saves an event -- its ``envelope``, exactly as it will go on the wire -- and its
"to publish" mark in one single-document write, then hands the saved document to
:meth:`OutboxRelay.wake`. The relay publishes those events at once, with
publisher confirms, and only then marks them published (one write per batch). Every
``sweep_interval`` seconds it also sweeps for anything still pending and due -- an event whose
wake-up was lost (the process died right after the write, the broker was down) still goes out,
after a restart if need be.

Delivery is at-least-once: a crash between the confirm and the mark publishes the event again
with the same id, and consumers are idempotent. Order is kept per order: an event that failed
holds back the later events of *its* order (and only those) until it gets through.

Two kinds of failure, treated differently:

* **the broker is away** (connection lost, confirm timed out): nothing is wrong with the event.
  The relay publishes only through sweeps until one gets through, and counts nothing;
* **the broker pushes back** (a queue the event goes to is at its length limit, and the broker
  nacks it): nothing is wrong with the event either; the consumers are behind. The relay stops
  the round, pauses (1 s, 2 s, 4 s, ... up to ``max_backoff``), then tries the oldest event
  alone, then two, four ... back to a whole batch, and counts nothing. While it pauses, :meth:`OutboxRelay.pushed_back` says for how
  long (the order API answers 503 with that ``Retry-After``). Each nacked try still reached the
  event's other queues -- a refusal by one queue does not undo the others -- so those get a
  copy per try: the probe keeps that to one event per pause, and consumers are idempotent;
* **the broker refused the event** (returned as unroutable): the event itself is
  the problem. Its attempts are counted, its next attempt backs off (2 s, 4 s, ... up to
  ``max_backoff``), and after ``max_attempts`` it is **parked**: left out of every sweep,
  shown by ``/readyz``, ``warren outbox list`` and the ledger, until an operator fixes the
  cause and runs ``warren outbox retry``. A refused event never starves the others: the
  sweep only reads events that are due.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aio_pika.exceptions import DeliveryError
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from shared.clock import DatabaseClock, utcnow_iso
from shared.contracts import Envelope
from shared.messaging import is_push_back, publish_event
from shared.periodic import every

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)

PENDING = "pending"
PUBLISHED = "published"
PARKED = "parked"

# The broker answered, and said no to this event: counted towards parking it (unless it is
# push-back: shared.messaging.is_push_back).
REFUSALS: tuple[type[Exception], ...] = (DeliveryError,)


PublishFn = Callable[[dict[str, Any]], Awaitable[None]]


# --8<-- [start:publish-stored-event]
def broker_publisher(broker: Any) -> PublishFn:
    """Publish a stored event's envelope as it was stored: its id, type, version and data are
    the ones the service recorded, never rebuilt."""

    async def publish(doc: dict[str, Any]) -> None:
        await publish_event(broker, Envelope.model_validate(doc["envelope"]))

    return publish
    # --8<-- [end:publish-stored-event]


def pending_fields(now: datetime, owner: str | None = None) -> dict[str, Any]:
    """The fields that put a just-saved event on the path of the relay of replica ``owner``
    (due at once)."""
    fields: dict[str, Any] = {"outbox": PENDING, "outbox_next_at": now}
    if owner is not None:
        fields["outbox_owner"] = owner
    return fields


async def create_indexes(collection: AsyncCollection) -> None:
    """The sweep reads ``{outbox: pending, outbox_next_at <= now}``: one index serves it."""
    await collection.create_index([("outbox", ASCENDING), ("outbox_next_at", ASCENDING)])
    # Events saved by an older Warren, before outbox_next_at existed: due now.
    await collection.update_many(
        {"outbox": PENDING, "outbox_next_at": {"$exists": False}},
        {"$set": {"outbox_next_at": datetime.fromtimestamp(0, UTC)}},
    )


class OutboxRelay:
    def __init__(
        self,
        collection: AsyncCollection,
        publish: PublishFn,
        *,
        owner: str | None = None,
        lease_seconds: float = 15.0,
        clock: DatabaseClock | None = None,
        sweep_interval: float = 2.0,
        batch_size: int = 200,
        max_attempts: int = 10,
        max_backoff: float = 60.0,
    ) -> None:
        self.collection = collection
        self.publish = publish
        # Replicas share the outbox; each publishes the events it saved (its ``owner`` id),
        # and holds a lease in ``<collection>_relays`` while it lives.
        self.owner = owner or replica_id()
        self.lease_seconds = lease_seconds
        self._leases = collection.database[f"{collection.name}_relays"]
        self.clock = clock or DatabaseClock()
        self._token = uuid.uuid4().hex  # this process's, in its lease document
        self._leased = False  # whether it has taken its lease once
        self._valid_until = 0.0  # monotonic: when its lease runs out unless renewed
        self._renewing = asyncio.Lock()
        self.sweep_interval = sweep_interval
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff
        self._fresh: list[dict[str, Any]] = []  # handed over by wake(), in write order
        # Sweeps only, until one gets through everything: after the broker went away, or while
        # a backlog is bigger than a batch.
        self._degraded = False
        self._held_back: set[str] = set()  # orders with an earlier event still to get through
        self._swept: set[str] = set()  # what the last sweep found
        self._wake = asyncio.Event()
        # Push-back: the current pause (0: none), when it ends, whether this round saw one, and
        # how many events a sweep may take (one after push-back, doubling back to a batch).
        self._pause = 0.0
        self._resume_at = 0.0
        self._nacked = False  # the current (or last) round saw a negative confirm
        self._limit = batch_size

    def pushed_back(self) -> float:
        """Seconds until the relay tries again after the broker pushed back (0: it is not)."""
        return max(0.0, self._resume_at - time.monotonic())

    # --8<-- [start:relay]
    def wake(self, docs: Sequence[dict[str, Any]] = ()) -> None:
        """Publish the pending ones of these just-saved events now (sweep, if none are given).

        The caller hands over the documents it has just written, so the relay need not read
        them back.
        """
        self._fresh.extend(doc for doc in docs if doc.get("outbox") == PENDING)
        self._wake.set()

    async def _publish_in_order(self, docs: list[dict[str, Any]], done: list[str]) -> None:
        for doc in docs:
            if self._nacked:
                return  # the broker pushes back: the rest waits for the next round
            # --8<-- [start:relay-span]
            # Publish inside the trace the event was recorded in, as a visible relay step.
            token = otel_context.attach(propagate.extract(doc.get("trace_context") or {}))
            try:
                with _tracer.start_as_current_span(
                    f"outbox relay {doc.get('type', 'event')}",
                    kind=SpanKind.INTERNAL,
                    attributes={
                        "messaging.message.id": str((doc.get("envelope") or {}).get("id", ""))
                    },
                ):
                    try:
                        await self.publish(doc)
                    except Exception as exc:
                        await self._failed(doc, exc)
                        raise
            finally:
                otel_context.detach(token)
            # --8<-- [end:relay-span]
            done.append(doc["_id"])

    # --8<-- [start:relay-failed]
    async def _failed(self, doc: dict[str, Any], exc: Exception) -> None:
        """Hold the event's order back; if the broker refused the event, count it (and park it
        after ``max_attempts``), so that it is retried later, not first in every sweep."""
        self._held_back.add(_order_of(doc))
        if not isinstance(exc, REFUSALS) or is_push_back(exc):
            # The broker is away, or pushes back: nothing wrong with this event. Sweeps only.
            self._degraded = True
            self._nacked = self._nacked or is_push_back(exc)
            return
        attempts = int(doc.get("outbox_attempts", 0)) + 1
        update: dict[str, Any] = {"outbox_attempts": attempts, "outbox_error": repr(exc)[:500]}
        if attempts >= self.max_attempts:
            update |= {"outbox": PARKED, "parked_at": utcnow_iso()}
            log.error(
                "outbox event parked", event_key=doc["_id"], attempts=attempts, error=repr(exc)
            )
        else:
            backoff = min(self.max_backoff, 2.0**attempts)
            update["outbox_next_at"] = datetime.now(UTC) + timedelta(seconds=backoff)
        with suppress_instrumentation():
            await self.collection.update_one(
                {"_id": doc["_id"], "outbox": PENDING}, {"$set": update}
            )
        # --8<-- [end:relay-failed]

    async def _publish(self, docs: list[dict[str, Any]]) -> int:
        """Publish ``docs`` (in order within each order, orders side by side), then mark them.

        One ``update_many`` marks the whole batch published: under load a batch holds many
        events, and the database sees one write instead of one per event.
        """
        by_order: dict[str, list[dict[str, Any]]] = {}
        for doc in sorted(docs, key=lambda d: d["_id"]):  # "<order>:<version>": version order
            by_order.setdefault(_order_of(doc), []).append(doc)
        done: list[str] = []
        self._nacked = False
        try:
            results = await asyncio.gather(
                *(self._publish_in_order(group, done) for group in by_order.values()),
                return_exceptions=True,
            )
        finally:
            if done:
                # Marked only after the confirms: a crash before this publishes them again.
                with suppress_instrumentation():
                    await self.collection.update_many(
                        {"_id": {"$in": done}, "outbox": PENDING},
                        {"$set": {"outbox": PUBLISHED, "published_at": utcnow_iso()}},
                    )
        failures = [result for result in results if isinstance(result, BaseException)]
        for failure in failures:
            if not is_push_back(failure):
                log.warning("outbox event not published", error=repr(failure))
        self._paced(pushed_back=self._nacked)
        if failures and not all(isinstance(f, REFUSALS) for f in failures):
            raise next(f for f in failures if not isinstance(f, REFUSALS))
        return len(done)

    # --8<-- [start:pace]
    def _paced(self, *, pushed_back: bool) -> None:
        """After a round. Pushed back: pause longer (1 s, 2 s, 4 s ... up to ``max_backoff``),
        then try one event. Not: take twice as many in the next sweep, until a whole batch gets
        through -- only then is the pause over. (A queue with room for one event has no room
        for two hundred: each refused try would still copy them into the event's other
        queues.)"""
        if pushed_back:
            self._pause = min(self.max_backoff, max(1.0, self._pause * 2))
            self._resume_at = time.monotonic() + self._pause
            self._limit = 1
            log.warning("outbox relay: the broker pushes back (a queue is full)", pause=self._pause)
        elif self._limit < self.batch_size:
            self._limit = min(self.batch_size, self._limit * 2)
        else:
            self._recovered()
        # --8<-- [end:pace]

    def _recovered(self) -> None:
        """A whole batch, or the whole backlog, got through: no more push-back."""
        if self._pause:
            log.info("outbox relay: the broker takes events again")
        self._pause, self._resume_at, self._limit = 0.0, 0.0, self.batch_size

    async def publish_fresh(self) -> int:
        """Publish the events handed over by :meth:`wake`, in the order written."""
        if not await self._may_publish():
            return 0  # another process has its name: the sweep will not publish either
        docs, self._fresh = self._fresh, []
        # Saved and swept before it was handed over (a slow multi-event append): done already.
        docs = [doc for doc in docs if doc["_id"] not in self._swept]
        if self._degraded:
            return 0  # the sweeps publish them, in order
        # An order whose earlier event is still to get through: the sweep keeps its order.
        docs = [doc for doc in docs if _order_of(doc) not in self._held_back]
        return await self._publish(docs) if docs else 0

    async def publish_pending(self) -> int:
        """Sweep: publish every pending event of this replica's that is due, oldest first.
        Returns how many went out.

        An event that fails holds back the later events of *its* order only; other orders go
        on. If the broker was away, the relay stays on sweeps until one gets through everything.
        """
        if not await self._may_publish():
            return 0  # not sure this replica's events are still its own: no sweep
        await self.adopt_orphans()
        now = datetime.now(UTC)
        # After push-back, one event probes whether the queues have room again, then more.
        limit = self._limit
        with suppress_instrumentation():
            # Orders whose earlier event waits for its next attempt: their later events wait too.
            waiting = {
                _order_of(doc)
                async for doc in self.collection.find(
                    {"outbox": PENDING, "outbox_next_at": {"$gt": now}}, {"order_id": 1}
                )
            }
            due = {"outbox": PENDING, "outbox_owner": self.owner, "outbox_next_at": {"$lte": now}}
            cursor = (
                self.collection.find(due)
                .sort([("outbox_next_at", ASCENDING), ("_id", ASCENDING)])
                .limit(limit)
            )
            batch = [doc async for doc in cursor]
        self._held_back = set(waiting)
        # A backlog bigger than a batch (or a probe): fresh events wait their turn behind it.
        self._degraded = len(batch) == limit
        try:
            published = await self._publish([doc for doc in batch if _order_of(doc) not in waiting])
            if len(batch) < limit and not self._nacked:
                self._recovered()  # the backlog is through
            return published
        finally:
            # An event saved while this sweep ran may be both swept and handed over: publish
            # once. (The ids are kept until the next sweep, for a hand-over that comes later.)
            self._swept = {doc["_id"] for doc in batch}
            self._fresh = [doc for doc in self._fresh if doc["_id"] not in self._swept]

    # --8<-- [start:lease]
    async def renew_lease(self) -> bool:
        """Tell the other replicas this one is alive, for ``lease_seconds`` more; False if it
        cannot (another live process holds its name).

        The lease document carries a token of this process's own: a process that took the same
        name by mistake cannot renew, nor release, the other's lease. Times are the database's
        clock (:class:`~shared.clock.DatabaseClock`), the one clock every replica shares."""
        async with self._renewing:  # the lease task and a publish may both renew
            sent, now = time.monotonic(), self.clock.now()
            renewal = {"$set": {"until": now + self.lease_seconds, "token": self._token}}
            with suppress_instrumentation():
                renewed = await self._leases.update_one(
                    {"_id": self.owner, "token": self._token, "until": {"$gte": now}}, renewal
                )
                if not renewed.matched_count and not await self._take_lease(now, renewal):
                    return False
            self._leased = True
            # Held by its own clock from before it asked, a little less: never longer than the
            # database holds it.
            self._valid_until = sent + self.lease_seconds * 0.9
            return True

    async def _take_lease(self, now: float, renewal: dict[str, Any]) -> bool:
        """No live lease of this process's: take one -- unless another live process holds this
        name. If its own had run out, keep only the handed-over events still its own."""
        taken = {"_id": self.owner, "until": {"$gte": now}, "token": {"$ne": self._token}}
        if await self._leases.find_one(taken) is not None:
            log.error("outbox relay: another live process has its name", owner=self.owner)
            self._fresh.clear()  # they are that process's to publish
            return False
        await self._leases.update_one({"_id": self.owner}, renewal, upsert=True)
        if self._leased:
            await self._keep_only_own_fresh()
        return True

    async def _keep_only_own_fresh(self) -> None:
        """The lease had run out (a stall, the database away): of the events it was handed, keep
        those still its own -- another replica may have adopted the others."""
        ids = [doc["_id"] for doc in self._fresh]
        still = {
            doc["_id"]
            async for doc in self.collection.find(
                {"_id": {"$in": ids}, "outbox_owner": self.owner, "outbox": PENDING}, {"_id": 1}
            )
        }
        if len(still) < len(ids):
            log.warning(
                "outbox relay: its lease had run out; others adopted", events=len(ids) - len(still)
            )
        self._fresh = [doc for doc in self._fresh if doc["_id"] in still]

    async def _may_publish(self) -> bool:
        """Whether its lease holds, or a renewal takes it again."""
        return self.leased() or await self.renew_lease()

    def leased(self) -> bool:
        """Whether its lease still holds, by this process's own monotonic clock. If not, the
        relay renews it before publishing: after a stall longer than the lease, another
        replica may have adopted what it holds, and the renewal finds out."""
        return time.monotonic() < self._valid_until

    async def keep_lease(self) -> None:
        """Renew the lease three times per lease, whatever the publishing is doing (the
        database away: the lease runs out meanwhile)."""
        await every(self.lease_seconds / 3, self.renew_lease, what="renew the outbox relay's lease")

    async def adopt_orphans(self) -> int:
        """Take over the pending events no live replica will publish: those of replicas whose
        lease ran out (or that died before taking one), once they are ``lease_seconds`` old,
        and those with no owner (saved by an older Warren, or put back by ``warren outbox
        retry``).

        Each event changes owner in one atomic update: when two replicas adopt at once, each
        event goes to one of them -- never both. (Its old owner, if it was only stalled, may
        still have it in flight: that copy is what the consumers' idempotency is for.)"""
        now = self.clock.now()
        old_enough = datetime.fromtimestamp(now - self.lease_seconds, UTC)
        with suppress_instrumentation():
            live = [doc["_id"] async for doc in self._leases.find({"until": {"$gte": now}})]
            adopted = 0
            for orphans in (
                {"outbox_owner": {"$exists": False}},
                {"outbox_owner": {"$nin": live}, "outbox_next_at": {"$lte": old_enough}},
            ):
                result = await self.collection.update_many(
                    {"outbox": PENDING, **orphans}, {"$set": {"outbox_owner": self.owner}}
                )
                adopted += result.modified_count
            await self._leases.delete_many({"until": {"$lt": now - self.lease_seconds}})
        if adopted:
            log.info("outbox relay adopted events no live replica publishes", events=adopted)
        return adopted

    async def release_lease(self) -> None:
        """Stopping: another replica adopts what is left once it is ``lease_seconds`` old."""
        with suppress_instrumentation():
            await self._leases.delete_one({"_id": self.owner, "token": self._token})
        # --8<-- [end:lease]

    async def run(self) -> None:
        lease = asyncio.create_task(self.keep_lease())
        try:
            await self._run()
        finally:
            lease.cancel()
            # A renewal in flight must not take the lease again after it is released.
            with contextlib.suppress(BaseException):
                await lease
            with contextlib.suppress(Exception):
                await self.release_lease()

    async def _run(self) -> None:
        next_sweep = time.monotonic()
        while True:
            if self.pushed_back():
                # Wake-ups wait too: new events join the backlog, which the probe then leads.
                await asyncio.sleep(self.pushed_back())
                next_sweep = time.monotonic()  # then probe at once
            timeout = max(0.0, next_sweep - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            self._wake.clear()
            try:
                await self.publish_fresh()
                if self.pushed_back():
                    continue  # refused just now: the sweep waits for the pause
                if time.monotonic() >= next_sweep or self._degraded:
                    # Sweep on schedule; while degraded, keep sweeping (paced by the wake-ups
                    # and the schedule) until a sweep gets through everything.
                    next_sweep = time.monotonic() + self.sweep_interval
                    await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay failed; the next sweep retries", error=repr(exc))
        # --8<-- [end:relay]


def replica_id() -> str:
    """This process's name as an outbox owner: host, process id and a random part. A restarted
    replica is a new owner; what the old one left is adopted a lease later."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _order_of(doc: dict[str, Any]) -> str:
    return str(doc.get("order_id", doc["_id"]))


# --8<-- [start:outbox-ops]
async def outbox_stats(collection: AsyncCollection) -> dict[str, Any]:
    """Pending and parked events, and the age of the oldest pending one (for ``/readyz``)."""
    with suppress_instrumentation():
        pending = await collection.count_documents({"outbox": PENDING})
        parked = await collection.count_documents({"outbox": PARKED})
        oldest = await collection.find_one(
            {"outbox": PENDING}, {"occurred_at": 1}, sort=[("occurred_at", ASCENDING)]
        )
    age = (datetime.now(UTC) - oldest["occurred_at"]).total_seconds() if oldest else 0.0
    return {"pending": pending, "parked": parked, "oldest_pending_seconds": round(age, 1)}


async def parked_events(collection: AsyncCollection, limit: int = 100) -> list[dict[str, Any]]:
    cursor = collection.find({"outbox": PARKED}).sort("_id", ASCENDING).limit(limit)
    return [doc async for doc in cursor]


async def retry_parked(collection: AsyncCollection, keys: Sequence[str] | None = None) -> int:
    """Put parked events (these ``keys``, or all) back on the relay's path with fresh attempts."""
    query: dict[str, Any] = {"outbox": PARKED}
    if keys is not None:
        query["_id"] = {"$in": list(keys)}
    result = await collection.update_many(
        query,
        {
            "$set": {**pending_fields(datetime.fromtimestamp(0, UTC)), "outbox_attempts": 0},
            "$unset": {"parked_at": "", "outbox_owner": ""},  # whichever replica sweeps first
        },
    )
    return result.modified_count
    # --8<-- [end:outbox-ops]
