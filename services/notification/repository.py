"""Notification's ``notifications`` collection: one document per event that sends an email.

Keyed by the event id, so a redelivered event finds its notification instead of making a
second one. ``state`` goes ``queued`` -> ``sending`` -> ``sent`` (or ``failed``: it can never be
sent, or its claims ran out).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.clock import DatabaseClock, utcnow_iso
from shared.mongo import insert_first
from shared.ordering import KeyState

# A notification queued and not handed to a task for this long lost its task (a task waiting
# for an SMTP retry touches it each time it gives its claim back).
QUIET_SECONDS = 120.0


@dataclass(frozen=True)
class OrderStream:
    """How far an order's events have been turned into emails: the sequence (shared/ordering.py)
    and the event handled last, whose email the next one's waits for."""

    state: KeyState = field(default_factory=KeyState)
    last_event: str | None = None


class NotificationRepository:
    def __init__(self, db: AsyncDatabase, clock: DatabaseClock | None = None) -> None:
        self.notifications = db["notifications"]
        # Per order, how far its events have been turned into emails (shared/ordering.py).
        self.order_streams = db["order_streams"]
        self.clock = clock or DatabaseClock()

    # --8<-- [start:order-streams]
    async def order_stream(self, order_id: str) -> OrderStream:
        """How far ``order_id``'s events have been handled here."""
        saved = await self.order_streams.find_one({"_id": order_id})
        if saved is None:
            return OrderStream()
        skipped = tuple((low, high) for low, high in saved.get("skipped", []))
        state = KeyState(last_applied=saved["last_applied"], skipped=skipped)
        return OrderStream(state, saved.get("last_event"))

    async def has_unordered_emails(self, order_id: str) -> bool:
        """Whether a notification of ``order_id`` was recorded by a version that did not order
        them (an upgrade's first events): it has no ``after``. This version's always has one,
        None for an order's first email -- tested here, not with ``$exists``, which the MongoDB
        stand-in gets wrong on a null."""
        async for note in self.notifications.find({"order_id": order_id}, {"after": 1}):
            if "after" not in note:
                return True
        return False

    async def advance(self, order_id: str, stream: OrderStream) -> None:
        """Save ``stream`` unless the saved one is as far on already (a redelivery that comes
        second must not move an order back)."""
        state = stream.state
        fields = {
            "last_applied": state.last_applied,
            "skipped": [list(r) for r in state.skipped],
            "last_event": stream.last_event,
        }
        if state.last_applied == 1:  # the order's first event: its stream is new here, usually
            with contextlib.suppress(DuplicateKeyError):  # or saved already: updated below
                await self.order_streams.insert_one({"_id": order_id, **fields})
                return
        moved = await self.order_streams.update_one(
            {"_id": order_id, "last_applied": {"$lt": state.last_applied}}, {"$set": fields}
        )
        if not moved.matched_count:  # not saved yet (a gap before it) -- or it is further on
            await insert_first(self.order_streams, {"_id": order_id, **fields})
        # --8<-- [end:order-streams]

    async def counts(self) -> dict[str, float]:
        """How many notifications are in each state (for the metrics: emails sent, failed,
        queued)."""
        return {
            state: float(await self.notifications.count_documents({"state": state}))
            for state in ("queued", "sent", "failed")
        }

    # --8<-- [start:record]
    async def record(self, notification: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert once; returns the stored notification (the existing one on a duplicate) and
        whether this call recorded it."""
        document = {
            **notification,
            "state": "queued",
            "created_at": utcnow_iso(),
            # When a task was last handed this notification (the sweeper's clock).
            "touched_at": self.clock.now(),
            # On the same clock: how long it has waited for the email before it (the worker).
            "recorded_at": self.clock.now(),
        }
        stands = await insert_first(self.notifications, document)
        assert stands is not None  # notifications are never deleted
        return stands, stands is document
        # --8<-- [end:record]

    # --8<-- [start:stuck]
    async def stuck(self, *, stale_claim_seconds: float, limit: int = 100) -> list[str]:
        """Notifications whose task was lost: queued but not handed to a task for a while, or
        claimed by a worker that died or froze mid-send (a stale claim)."""
        now = self.clock.now()
        queued = self.notifications.find(
            {"state": "queued", "touched_at": {"$lt": now - QUIET_SECONDS}}, {"_id": 1}
        ).limit(limit)
        sending = self.notifications.find(
            {"state": "sending", "claimed_at": {"$lt": now - stale_claim_seconds}}, {"_id": 1}
        ).limit(limit)
        return [doc["_id"] async for doc in queued] + [doc["_id"] async for doc in sending]

    async def touched(self, notification_ids: list[str]) -> None:
        """These were just handed to a task again: leave them alone for a while."""
        await self.notifications.update_many(
            {"_id": {"$in": notification_ids}}, {"$set": {"touched_at": self.clock.now()}}
        )
        # --8<-- [end:stuck]
