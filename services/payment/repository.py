"""Payment's own record of each order's outcome, keyed by order id (the natural key)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.payment.domain import Payment, PaymentStatus
from shared.mongo import insert_first


class PaymentRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.payments = db["payments"]

    async def get(self, order_id: str) -> Payment | None:
        doc = await self.payments.find_one({"_id": order_id})
        return Payment.from_document(doc) if doc else None

    async def record_outcome(
        self,
        order_id: str,
        *,
        status: PaymentStatus,
        charge_id: str = "",
        amount_cents: int = 0,
        processed_by: str = "",
        outcome_event: Mapping[str, Any] | None = None,
    ) -> Payment:
        """Write the outcome once; returns the outcome that stands (the first one written)."""
        document = {
            "_id": order_id,
            "status": status.value,
            "charge_id": charge_id,
            "amount_cents": amount_cents,
            "processed_by": processed_by,
            "outcome_event": outcome_event,
        }
        stands = await insert_first(self.payments, document)
        assert stands is not None  # outcomes are never deleted
        return Payment.from_document(stands)

    async def mark_refunded(self, order_id: str) -> None:
        await self.payments.update_one(
            {"_id": order_id, "status": PaymentStatus.PAID.value},
            {"$set": {"status": PaymentStatus.REFUNDED.value}},
        )
