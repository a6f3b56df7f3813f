"""Notification's ``notifications`` collection: one document per event that sends an email.

Keyed by the event id, so a redelivered event finds its notification instead of making a
second one. ``state`` goes ``queued`` -> ``sending`` -> ``sent`` (or ``failed``: it can never be
sent, or its claims ran out).
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shared.clock import DatabaseClock, utcnow_iso
from shared.mongo import insert_first

# A notification queued and not handed to a task for this long lost its task (a task waiting
# for an SMTP retry touches it each time it gives its claim back).
QUIET_SECONDS = 120.0


class NotificationRepository:
    def __init__(self, db: AsyncDatabase, clock: DatabaseClock | None = None) -> None:
        self.notifications = db["notifications"]
        self.clock = clock or DatabaseClock()

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
