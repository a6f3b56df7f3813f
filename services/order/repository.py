"""The order service's collections.

* ``order_events`` -- the event store, and the source of truth. Append-only. Each event's
  ``_id`` is its natural key, ``"<order id>:<version, 6 digits>"``: two writers racing for the
  same version collide on it instead of forking the stream (optimistic concurrency), and an
  order's events are read by exact keys -- fast on MongoDB and on the stand-in alike, which
  scans a collection for any other filter. Each document holds the event's ``envelope``
  exactly as it goes on the wire (its id, type, schema version, data...), beside the fields
  the store queries (``order_id``, ``version``, ``type``, ``occurred_at``). The store is also
  the **outbox**: an event to publish is stored with ``outbox: "pending"`` in the same
  single-document insert that records it, so it cannot be lost between "saved" and
  "published"; the relay publishes the stored envelope as it is, and flips the mark to
  "published".
* ``orders`` -- the read model (CQRS): one document per order, a projection of its events,
  rebuildable at any time by replaying ``order_events``.
* ``idempotency_keys`` -- ``Idempotency-Key`` header -> order id, expiring after a day.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.order.domain import ORDER_EVENT_TYPES, Order, OrderEvent, is_published
from shared import outbox
from shared.clock import iso
from shared.contracts import Envelope, EventData
from shared.mongo import insert_first

IDEMPOTENCY_KEY_TTL_SECONDS = 24 * 3600


SAGA_OPEN = "open"


class ConcurrencyError(Exception):
    """Another writer appended to this order's stream first; reload and decide again."""


# Versions are read in batches of exact keys: an order has a handful of events.
_LOAD_BATCH = 8
# How many orders' streams a process keeps in memory (``EventStore.load(recent=True)``).
RECENT_STREAMS = 10_000


def event_key(order_id: str, version: int) -> str:
    """The natural key of an event: sorts by order, then version."""
    return f"{order_id}:{version:06d}"


SOURCE = "order"


def to_event(doc: dict[str, Any]) -> OrderEvent:
    """A stored event, typed, as the aggregate folds it."""
    envelope = Envelope.model_validate(doc["envelope"])
    return OrderEvent(
        version=doc["version"],
        data=envelope.payload(ORDER_EVENT_TYPES),
        occurred_at=doc["occurred_at"],
        caused_by=envelope.causation_id,
    )


def to_events(docs: Sequence[dict[str, Any]]) -> list[OrderEvent]:
    return [to_event(doc) for doc in docs]


def new_document(
    envelope: Envelope, data: EventData, trace_context: dict[str, str], owner: str | None = None
) -> dict[str, Any]:
    """The stored form of an event: its envelope as it goes on the wire, the fields the store
    queries, and ``outbox``: whether the relay must publish it."""
    return {
        "_id": event_key(envelope.correlation_id, envelope.sequence),
        "order_id": envelope.correlation_id,
        "version": envelope.sequence,
        "type": envelope.type,
        "occurred_at": envelope.occurred_at,  # a BSON date: the outbox and replays sort on it
        "envelope": envelope.model_dump(mode="json"),
        # The trace it was recorded in (W3C headers): its publication continues that trace.
        "trace_context": trace_context,
        **(
            outbox.pending_fields(envelope.occurred_at, owner)
            if is_published(data)
            else {"outbox": "internal"}
        ),
    }


# --8<-- [start:event-store]
class EventStore:
    def __init__(
        self, db: AsyncDatabase, *, outbox_owner: str | None = None, recent: int = RECENT_STREAMS
    ) -> None:
        self.events = db["order_events"]
        self.outbox_owner = outbox_owner  # the replica whose relay publishes what it saves
        # The streams this process wrote lately (the most recent last): a hint, not the truth
        # -- another replica may have appended since. See load(recent=True).
        self._recent: OrderedDict[str, list[OrderEvent]] = OrderedDict()
        self._recent_limit = recent

    async def create_indexes(self) -> None:
        # (order, version) is unique through _id; the outbox sweep has an index of its own,
        # and so has the saga deadline sweep.
        await outbox.create_indexes(self.events)
        await self.events.create_index([("saga", ASCENDING), ("saga_deadline", ASCENDING)])
        await self.upgrade_older_documents()

    async def upgrade_older_documents(self) -> int:
        """Events stored by an older Warren kept ``event_id``, ``data`` and ``causation_id``
        beside the query fields, and no envelope (their schema version was always 1): give each
        its envelope, once, so that they load and publish like the others. Returns how many."""
        upgraded = 0
        async for doc in self.events.find({"envelope": {"$exists": False}}):
            envelope = Envelope(
                id=doc["event_id"],
                type=doc["type"],
                occurred_at=doc["occurred_at"],
                source=SOURCE,
                correlation_id=doc["order_id"],
                causation_id=doc.get("causation_id"),
                sequence=doc["version"],
                data=doc["data"],
            )
            await self.events.update_one(
                {"_id": doc["_id"], "envelope": {"$exists": False}},
                {
                    "$set": {"envelope": envelope.model_dump(mode="json")},
                    "$unset": {"event_id": "", "data": "", "causation_id": ""},
                },
            )
            upgraded += 1
        return upgraded

    async def append(
        self,
        order_id: str,
        expected_version: int,
        new_events: Sequence[EventData],
        *,
        causation: Envelope | None = None,
        trace_context: dict[str, str] | None = None,
        saga_deadline: datetime | None = None,
        published_before: int = 0,
    ) -> list[dict[str, Any]]:
        """Append after ``expected_version``; returns the documents stored, or raises
        :class:`ConcurrencyError` if the stream moved on. ``published_before``: the version of
        the order's last published event (``Order.last_published``), which the next published
        one names as its predecessor.

        Events are inserted one by one, each a single atomic insert: if the process dies
        half-way, the stream is still a valid prefix, and the next attempt carries on.
        ``saga_deadline`` (with the first event) opens the order's saga until then.
        """
        now = datetime.now(UTC)
        # BSON dates keep milliseconds: round here so the documents returned equal the stored ones.
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        # This process's copy is out while it appends: a failure half-way leaves none.
        known = [] if expected_version == 0 else self._recent.pop(order_id, None)
        appended: list[dict[str, Any]] = []
        events: list[OrderEvent] = []
        previous = published_before
        for version, data in enumerate(new_events, start=expected_version + 1):
            envelope = Envelope.wrap(
                data,
                source=SOURCE,
                causation=causation,
                sequence=version,
                previous_sequence=previous if is_published(data) else None,
                occurred_at=now,
            )
            previous = version if is_published(data) else previous
            document = new_document(envelope, data, trace_context or {}, self.outbox_owner)
            if saga_deadline is not None and version == 1:
                # In the same insert: an order never exists without its deadline.
                document |= {"saga": SAGA_OPEN, "saga_deadline": saga_deadline}
            try:
                await self.events.insert_one(document)
            except DuplicateKeyError as exc:
                raise ConcurrencyError(f"order {order_id} moved past {version - 1}") from exc
            appended.append(document)
            events.append(
                OrderEvent(
                    version=version, data=data, occurred_at=now, caused_by=envelope.causation_id
                )
            )
        self._keep_recent(order_id, expected_version, known, events)
        return appended
        # --8<-- [end:event-store]

    # --8<-- [start:recent-streams]
    async def load(self, order_id: str, *, recent: bool = False) -> list[OrderEvent]:
        """The order's stream, version 1 onwards, read by exact keys.

        ``recent=True`` takes this process's own copy instead, if it has one, with no database
        command. A copy holds only what this process wrote: it starts with the order's first
        event and grows with this process's appends, each acknowledged by the database (what
        it reads is never kept: a read may see a write that a failover takes back). The copy
        may be behind -- another replica may have appended since -- so a decision taken from
        it must be checked: an append at its version collides on the event's key
        (ConcurrencyError), and a decision to do nothing or to wait is taken only from the
        database (handlers.follow_saga).
        """
        if recent and (known := self._recent.get(order_id)) is not None:
            self._recent.move_to_end(order_id)
            return list(known)
        return await self._read(order_id)

    def _keep_recent(
        self, order_id: str, after: int, known: list[OrderEvent] | None, appended: list[OrderEvent]
    ) -> None:
        """The copy, with what this process appended after version ``after``; ``known``: the
        copy it had (``[]`` for a new stream)."""
        if not appended or known is None or len(known) != after:
            return  # no copy, or not of the stream it appended to: it reads it next time
        self._recent[order_id] = known + appended  # the most recently used, last
        while len(self._recent) > self._recent_limit:
            self._recent.popitem(last=False)  # the least recently used
            # --8<-- [end:recent-streams]

    async def _read(self, order_id: str) -> list[OrderEvent]:
        events: list[OrderEvent] = []
        while True:
            first = len(events) + 1
            keys = [event_key(order_id, v) for v in range(first, first + _LOAD_BATCH)]
            batch = sorted(
                [to_event(doc) async for doc in self.events.find({"_id": {"$in": keys}})],
                key=lambda event: event.version,
            )
            events += batch
            if len(batch) < _LOAD_BATCH:
                return events

    # --8<-- [start:saga-deadlines]
    async def overdue_sagas(self, now: datetime, limit: int = 100) -> list[str]:
        """Orders whose saga is still open past its deadline (oldest deadline first)."""
        cursor = (
            self.events.find({"saga": SAGA_OPEN, "saga_deadline": {"$lte": now}}, {"order_id": 1})
            .sort("saga_deadline", ASCENDING)
            .limit(limit)
        )
        return [doc["order_id"] async for doc in cursor]

    async def close_saga(self, order_id: str) -> None:
        """The order is final: its deadline no longer matters (nor this process's copy)."""
        self._recent.pop(order_id, None)
        await self.events.update_one(
            {"_id": event_key(order_id, 1), "saga": SAGA_OPEN}, {"$set": {"saga": "closed"}}
        )
        # --8<-- [end:saga-deadlines]

    async def exists(self, order_id: str) -> bool:
        return await self.events.find_one({"_id": event_key(order_id, 1)}, {"_id": 1}) is not None

    async def all_events(self) -> AsyncIterator[tuple[str, OrderEvent]]:
        """Every event with its order id, grouped by order and in version order (for replays)."""
        async for doc in self.events.find({}).sort("_id", ASCENDING):
            yield doc["order_id"], to_event(doc)


class OrderViews:
    """The read model the API serves."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.orders = db["orders"]

    async def create_indexes(self) -> None:
        await self.orders.create_index([("customer_id", ASCENDING), ("placed_at", DESCENDING)])

    # --8<-- [start:views-save]
    async def save(self, order: Order) -> None:
        """Write the projection unless a newer one is already there (projections may race)."""
        view = {
            "customer_id": order.customer_id,
            "status": order.status.value,
            "lines": order.lines,
            "total_cents": order.total_cents,
            "currency": order.currency,
            "version": order.version,
            "cancel_reason": order.cancel_reason,
            "placed_at": iso(order.placed_at) if order.placed_at else None,
            "updated_at": iso(order.updated_at) if order.updated_at else None,
            "history": [
                {**entry, "occurred_at": iso(entry["occurred_at"])} for entry in order.history
            ],
        }
        # A DuplicateKeyError means the stored view is at this version or newer: keep it.
        with contextlib.suppress(DuplicateKeyError):
            await self.orders.update_one(
                {"_id": order.id, "version": {"$lt": order.version}}, {"$set": view}, upsert=True
            )
        # --8<-- [end:views-save]

    async def get(self, order_id: str) -> dict[str, Any] | None:
        return await self.orders.find_one({"_id": order_id})

    async def by_customer(
        self, customer_id: str, *, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        query = {"customer_id": customer_id}
        cursor = (
            self.orders.find(query)
            # _id breaks ties so that pages never overlap or skip an order.
            .sort([("placed_at", DESCENDING), ("_id", DESCENDING)])
            .skip(offset)
            .limit(limit)
        )
        items = [doc async for doc in cursor]
        return items, await self.orders.count_documents(query)

    async def clear(self) -> None:
        await self.orders.delete_many({})


class IdempotencyKeys:
    def __init__(self, db: AsyncDatabase) -> None:
        self.keys = db["idempotency_keys"]

    async def create_indexes(self) -> None:
        await self.keys.create_index("created_at", expireAfterSeconds=IDEMPOTENCY_KEY_TTL_SECONDS)

    async def claim(self, key: str, order_id: str, request_hash: str) -> dict[str, Any]:
        """Bind ``key`` to ``order_id`` unless it is bound already; returns the binding that stands."""
        document = {
            "_id": key,
            "order_id": order_id,
            "request_hash": request_hash,
            "created_at": datetime.now(UTC),  # a BSON date: the TTL index needs one
        }
        stands = await insert_first(self.keys, document)
        # None: the key expired between the insert and the read -- claim again.
        return stands if stands is not None else await self.claim(key, order_id, request_hash)

    async def forget(self, key: str, order_id: str) -> None:
        """Unbind a key whose request was refused, so the client may fix it and retry."""
        await self.keys.delete_one({"_id": key, "order_id": order_id})
