"""Inventory's own collections: ``stock`` (one document per SKU) and ``reservations`` (per order).

No multi-document transactions: every step is a single-document atomic update guarded so that
running it twice changes nothing. A SKU's document keeps the order's hold in a map keyed by
order id (``holds.<order_id>``), never in an array: the guard "this order holds nothing here
yet" is then a plain ``$exists`` test, and releasing is an ``$unset``.

Invariant, per SKU: ``available + reserved + sold == initial``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.inventory.catalog import CatalogItem

# How long a claim to decide an order's reservation holds before another delivery may take
# it over (the claimant died mid-way). Deciding takes milliseconds.
DECISION_LEASE_SECONDS = 30.0


class StockRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.stock = db["stock"]
        self.reservations = db["reservations"]

    # --- catalog -------------------------------------------------------------------------

    async def seed(self, items: Iterable[CatalogItem], *, reset: bool = False) -> int:
        """Insert the catalog; ``reset`` also puts stock back to its initial level."""
        count = 0
        for item in items:
            fields = {"name": item.name, "price_cents": item.price_cents}
            levels = {
                "initial": item.stock,
                "available": item.stock,
                "reserved": 0,
                "sold": 0,
                "holds": {},
            }
            # Not replace_one(upsert=True): the stand-in ignores the filter's _id there.
            update = (
                {"$set": {**fields, **levels}}
                if reset
                else {"$set": fields, "$setOnInsert": levels}
            )
            await self.stock.update_one({"_id": item.sku}, update, upsert=True)
            count += 1
        return count

    async def find_skus(self, skus: Iterable[str]) -> dict[str, dict[str, Any]]:
        cursor = self.stock.find({"_id": {"$in": list(skus)}})
        return {doc["_id"]: doc async for doc in cursor}

    async def all_stock(self) -> list[dict[str, Any]]:
        return [doc async for doc in self.stock.find({}).sort("_id", ASCENDING)]

    # --- holds: one order's quantity of one SKU ------------------------------------------

    # --8<-- [start:holds]
    async def hold(self, sku: str, order_id: str, quantity: int) -> bool:
        """Move ``quantity`` from available to reserved for ``order_id``.

        True if the order now holds the SKU (including "already held by an earlier attempt"),
        False if there is not enough stock or the SKU is unknown.
        """
        result = await self.stock.update_one(
            {"_id": sku, "available": {"$gte": quantity}, f"holds.{order_id}": {"$exists": False}},
            {
                "$inc": {"available": -quantity, "reserved": quantity},
                "$set": {f"holds.{order_id}": quantity},
            },
        )
        if result.modified_count == 1:
            return True
        existing = await self.stock.find_one(
            {"_id": sku, f"holds.{order_id}": {"$exists": True}}, {"_id": 1}
        )
        return existing is not None

    async def release_hold(self, sku: str, order_id: str, quantity: int) -> None:
        """Give a held quantity back to available (a no-op if the order holds nothing here)."""
        await self.stock.update_one(
            {"_id": sku, f"holds.{order_id}": {"$exists": True}},
            {
                "$inc": {"available": quantity, "reserved": -quantity},
                "$unset": {f"holds.{order_id}": ""},
            },
        )
        # --8<-- [end:holds]

    async def commit_hold(self, sku: str, order_id: str, quantity: int) -> None:
        """Turn a held quantity into sold (a no-op if the order holds nothing here)."""
        await self.stock.update_one(
            {"_id": sku, f"holds.{order_id}": {"$exists": True}},
            {
                "$inc": {"reserved": -quantity, "sold": quantity},
                "$unset": {f"holds.{order_id}": ""},
            },
        )

    # --- reservations: the decision per order, written once ------------------------------

    async def get_reservation(self, order_id: str) -> dict[str, Any] | None:
        return await self.reservations.find_one({"_id": order_id})

    # --8<-- [start:record-decision]
    async def claim_decision(
        self, order_id: str, owner: str, *, lease_seconds: float = DECISION_LEASE_SECONDS
    ) -> dict[str, Any]:
        """Claim the right to decide this order's reservation, before touching any stock.

        Returns the reservation as it stands: ``state == "deciding"`` and ``owner == owner``
        means the caller may go ahead; a decided state means it was decided before; another
        owner with a live lease means a duplicate delivery is deciding right now. A lease left
        by a process that died mid-way is taken over once it expires.
        """
        now = time.time()
        claim = {"state": "deciding", "owner": owner, "lease_until": now + lease_seconds}
        try:
            await self.reservations.insert_one({"_id": order_id, **claim})
            return {"_id": order_id, **claim}
        except DuplicateKeyError:
            pass
        await self.reservations.update_one(
            {"_id": order_id, "state": "deciding", "lease_until": {"$lt": now}}, {"$set": claim}
        )
        current = await self.get_reservation(order_id)
        assert current is not None
        return current

    async def record_decision(
        self,
        order_id: str,
        owner: str,
        *,
        state: str,
        lines: Mapping[str, int],
        event: dict[str, Any],
    ) -> bool:
        """Record the outcome (with the event that announces it), if ``owner`` still decides."""
        result = await self.reservations.update_one(
            {"_id": order_id, "state": "deciding", "owner": owner},
            {"$set": {"state": state, "lines": dict(lines), "outcome_event": event}},
        )
        return result.modified_count == 1
        # --8<-- [end:record-decision]

    async def begin_release(self, order_id: str, event: dict[str, Any]) -> dict[str, Any] | None:
        """Mark a reserved order as releasing and fix the id of its ``stock.released`` event.

        Returns the reservation as it now stands (None if there is none).
        """
        await self.reservations.update_one(
            {"_id": order_id, "state": "reserved"},
            {"$set": {"state": "releasing", "release_event": event}},
        )
        return await self.get_reservation(order_id)

    async def set_state(self, order_id: str, *, from_state: str, to_state: str) -> None:
        await self.reservations.update_one(
            {"_id": order_id, "state": from_state}, {"$set": {"state": to_state}}
        )
