"""The audit's own store, database ``<prefix>_audit``: append-only.

* ``trail``: one document per event arrival (:func:`services.audit.domain.trail_entry`),
  indexed by order and time (``warren audit <order id>``) and by arrival time;
* ``broker_events``: one per security event of the broker, indexed by time.

**Insert only.** Nothing in Warren updates or deletes an audit document: a record that can be
rewritten is no evidence. A redelivered event finds its record (the unique ``_id``) and leaves
it as it is -- the first arrival stands. There is no TTL either: how long an audit trail is
kept is the operator's decision (export a period, then drop it), not a side effect of an index.
(``tests/unit/test_audit.py`` checks that the audit calls nothing but inserts and reads.)
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from shared.mongo import insert_first


class AuditTrail:
    def __init__(self, db: AsyncDatabase) -> None:
        self.events = db["trail"]
        self.broker_events = db["broker_events"]

    async def create_indexes(self) -> None:
        await self.events.create_index([("order_id", ASCENDING), ("occurred_at", ASCENDING)])
        await self.events.create_index([("received_at", ASCENDING)])
        await self.broker_events.create_index([("at", ASCENDING)])

    async def record(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        """Insert ``entry`` unless its event was recorded from this publisher already; the
        record that stands."""
        return await insert_first(self.events, entry)

    async def record_broker_event(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        return await insert_first(self.broker_events, entry)

    async def order_trail(self, order_id: str) -> list[dict[str, Any]]:
        """Every arrival of an event of ``order_id``, in the order the events occurred."""
        cursor = self.events.find({"order_id": order_id}).sort(
            [("occurred_at", ASCENDING), ("received_at", ASCENDING)]
        )
        return [entry async for entry in cursor]

    async def latest_broker_events(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` latest security events of the broker, oldest first."""
        cursor = self.broker_events.find({}).sort([("at", DESCENDING)]).limit(limit)
        return list(reversed([entry async for entry in cursor]))
