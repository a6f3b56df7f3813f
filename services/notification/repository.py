"""Notification's ``notifications`` collection: one document per event that sends an email.

Keyed by the event id, so a redelivered event finds its notification instead of making a
second one. ``state`` goes ``queued`` -> ``sending`` -> ``sent`` (or ``failed``: it can never be
sent, or its claims ran out).
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shared.clock import utcnow_iso
from shared.mongo import insert_first


class NotificationRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.notifications = db["notifications"]

    # --8<-- [start:record]
    async def record(self, notification: dict[str, Any]) -> dict[str, Any]:
        """Insert once; returns the stored notification (the existing one on a duplicate)."""
        stands = await insert_first(
            self.notifications, {**notification, "state": "queued", "created_at": utcnow_iso()}
        )
        assert stands is not None  # notifications are never deleted
        return stands
        # --8<-- [end:record]

    # --8<-- [start:stuck]
    async def stuck(
        self, *, queued_before: str, claimed_before: float, limit: int = 100
    ) -> list[str]:
        """Notifications whose task was lost: queued long ago, or claimed by a worker that
        died or froze mid-send (a stale claim)."""
        queued = self.notifications.find(
            {"state": "queued", "created_at": {"$lt": queued_before}}, {"_id": 1}
        ).limit(limit)
        sending = self.notifications.find(
            {"state": "sending", "claimed_at": {"$lt": claimed_before}}, {"_id": 1}
        ).limit(limit)
        return [doc["_id"] async for doc in queued] + [doc["_id"] async for doc in sending]
        # --8<-- [end:stuck]
