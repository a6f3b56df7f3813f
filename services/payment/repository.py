"""Payment's own record of each order's outcome, keyed by order id (the natural key)."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shared.mongo import insert_first


class PaymentRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.payments = db["payments"]

    async def get(self, order_id: str) -> dict[str, Any] | None:
        return await self.payments.find_one({"_id": order_id})

    async def record_outcome(self, order_id: str, document: dict[str, Any]) -> dict[str, Any]:
        """Write the outcome once; returns the outcome that stands (the first one written)."""
        stands = await insert_first(self.payments, {"_id": order_id, **document})
        assert stands is not None  # outcomes are never deleted
        return stands

    async def mark_refunded(self, order_id: str) -> None:
        await self.payments.update_one(
            {"_id": order_id, "status": "paid"}, {"$set": {"status": "refunded"}}
        )
