"""Notification's ``notifications`` collection: one document per event that sends an email.

Keyed by the event id, so a redelivered event finds its notification instead of making a
second one. ``state`` goes ``queued`` -> ``sending`` -> ``sent``.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.clock import utcnow_iso


class NotificationRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.notifications = db["notifications"]

    async def create_indexes(self) -> None:
        await self.notifications.create_index([("order_id", ASCENDING)])
        await self.notifications.create_index([("state", ASCENDING)])

    # --8<-- [start:record]
    async def record(self, notification: dict[str, Any]) -> dict[str, Any]:
        """Insert once; returns the stored notification (the existing one on a duplicate)."""
        try:
            await self.notifications.insert_one(
                {**notification, "state": "queued", "created_at": utcnow_iso()}
            )
        except DuplicateKeyError:
            existing = await self.notifications.find_one({"_id": notification["_id"]})
            assert existing is not None
            return existing
        return {**notification, "state": "queued"}
        # --8<-- [end:record]
