"""Inventory's own collections: ``stock`` (one document per SKU) and ``reservations`` (per order).

No multi-document transactions: every step is a single-document atomic update guarded so that
running it twice changes nothing. A SKU's document keeps the order's hold in a map keyed by
order id (``holds.<order_id>``), never in an array: the guard "this order holds nothing here
yet" is then a plain ``$exists`` test, and releasing is an ``$unset``.

Invariant, per SKU: ``available + reserved + sold == initial``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.inventory.catalog import CatalogItem


class StockRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.stock = db["stock"]
        self.reservations = db["reservations"]

    async def create_indexes(self) -> None:
        await self.reservations.create_index([("state", ASCENDING)])

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
    async def record_decision(
        self, order_id: str, *, state: str, lines: Mapping[str, int], event: dict[str, Any]
    ) -> dict[str, Any]:
        """Record the reservation's outcome once; returns the decision that stands."""
        document = {"_id": order_id, "state": state, "lines": dict(lines), "outcome_event": event}
        try:
            await self.reservations.insert_one(document)
        except DuplicateKeyError:
            existing = await self.get_reservation(order_id)
            assert existing is not None
            return existing
        return document
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

    async def record_tombstone(self, order_id: str, state: str) -> None:
        """Remember an outcome that arrived before the order did, so a late order is not reserved."""
        with contextlib.suppress(DuplicateKeyError):
            await self.reservations.insert_one(
                {"_id": order_id, "state": state, "lines": {}, "outcome_event": None}
            )
