"""Inventory's own collections: ``stock`` (one document per SKU) and ``reservations`` (per order).

No multi-document transactions: every step is a single-document atomic update guarded so that
running it twice changes nothing. A SKU's document keeps, in maps keyed by order id (never
arrays: the guards are then plain ``$exists`` tests and an ``$unset`` releases):

* ``holds.<order_id>``: ``{"quantity": 2, "owner": "<claim id>"}`` -- stock held for an order
  by the delivery that owns its claim. Only that owner releases it; a later owner of the claim
  (the first one's lease ran out) adopts it;
* ``settled.<order_id>``: ``{"state": "committed", "quantity": 2, "at": ...}`` -- the
  **tombstone** left when the order's reservation became final. No hold is ever taken for an
  order with a tombstone, so a delivery that stalled mid-way cannot take stock again after the
  reservation settled.

Invariants, per SKU: ``available + reserved + sold == initial``; ``reserved`` is the sum of the
holds; ``sold`` is the sum of the ``committed`` tombstones.

Lease times come from :class:`shared.clock.DatabaseClock`: one clock for every process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.inventory.catalog import CatalogItem
from services.inventory.domain import Reservation, ReservationState
from shared.clock import DatabaseClock, utcnow_iso
from shared.mongo import insert_first

# How long a claim to decide an order's reservation holds before another delivery may take
# it over (the claimant died or froze mid-way). Deciding takes milliseconds; the owner renews
# the lease before every write. Must be shorter than the retry budget (checked at start-up).
DECISION_LEASE_SECONDS = 30.0


def _entry(doc: Mapping[str, Any], field: str, order_id: str) -> Any:
    """``doc[field][order_id]`` from a document read with the projection ``{field.order_id: 1}``.

    MongoDB (and mongomock) answer such a projection with the nested document; the stand-in
    answers with a flat ``"field.order_id"`` key. Read both.
    """
    return (doc.get(field) or {}).get(order_id, doc.get(f"{field}.{order_id}"))


class HoldOutcome(StrEnum):
    HELD = "held"  # the order now holds the SKU, for us
    SHORT = "short"  # not enough stock (or no such SKU)
    OTHER_OWNER = "other-owner"  # held for this order by another (stale) claim
    SETTLED = "settled"  # the order's reservation is final here: never hold again


@dataclass(frozen=True)
class Hold:
    outcome: HoldOutcome
    owner: str = ""


class StockRepository:
    def __init__(
        self,
        db: AsyncDatabase,
        *,
        lease_seconds: float = DECISION_LEASE_SECONDS,
        clock: DatabaseClock | None = None,
    ) -> None:
        self.stock = db["stock"]
        self.reservations = db["reservations"]
        self.lease_seconds = lease_seconds
        self.clock = clock or DatabaseClock()

    def now(self) -> float:
        return self.clock.now()

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
                "settled": {},
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
        cursor = self.stock.find({"_id": {"$in": list(skus)}}, {"holds": 0, "settled": 0})
        return {doc["_id"]: doc async for doc in cursor}

    async def all_stock(self) -> list[dict[str, Any]]:
        return [doc async for doc in self.stock.find({}).sort("_id", ASCENDING)]

    # --- holds: one order's quantity of one SKU ------------------------------------------

    # --8<-- [start:holds]
    async def hold(self, sku: str, order_id: str, owner: str, quantity: int) -> Hold:
        """Move ``quantity`` from available to reserved for ``order_id``, held by ``owner``."""
        result = await self.stock.update_one(
            {
                "_id": sku,
                "available": {"$gte": quantity},
                f"holds.{order_id}": {"$exists": False},
                f"settled.{order_id}": {"$exists": False},
            },
            {
                "$inc": {"available": -quantity, "reserved": quantity},
                "$set": {f"holds.{order_id}": {"quantity": quantity, "owner": owner}},
            },
        )
        if result.modified_count == 1:
            return Hold(HoldOutcome.HELD, owner)
        doc = await self.stock.find_one(
            {"_id": sku}, {f"holds.{order_id}": 1, f"settled.{order_id}": 1}
        )
        if doc is None:
            return Hold(HoldOutcome.SHORT)
        if _entry(doc, "settled", order_id) is not None:
            return Hold(HoldOutcome.SETTLED)
        held = _entry(doc, "holds", order_id)
        if held is None:
            return Hold(HoldOutcome.SHORT)
        if held["owner"] == owner:
            return Hold(HoldOutcome.HELD, owner)  # an earlier attempt of ours got this far
        return Hold(HoldOutcome.OTHER_OWNER, held["owner"])

    async def adopt(self, sku: str, order_id: str, stale_owner: str, owner: str) -> bool:
        """Take over a hold left by a claim that ran out (the caller holds the live claim)."""
        result = await self.stock.update_one(
            {"_id": sku, f"holds.{order_id}.owner": stale_owner},
            {"$set": {f"holds.{order_id}.owner": owner}},
        )
        return result.modified_count == 1

    async def release(
        self, sku: str, order_id: str, owner: str, quantity: int, *, settle_as: str | None = None
    ) -> bool:
        """Give ``owner``'s hold back to available; with ``settle_as``, leave the tombstone.

        A no-op (False) if ``owner`` holds nothing here: it never gives back another's hold.
        """
        update: dict[str, Any] = {
            "$inc": {"available": quantity, "reserved": -quantity},
            "$unset": {f"holds.{order_id}": ""},
        }
        if settle_as is not None:
            update["$set"] = {f"settled.{order_id}": self._tombstone(settle_as, quantity)}
        result = await self.stock.update_one({"_id": sku, f"holds.{order_id}.owner": owner}, update)
        return result.modified_count == 1
        # --8<-- [end:holds]

    async def commit(self, sku: str, order_id: str, owner: str, quantity: int) -> None:
        """Turn ``owner``'s hold into sold, leaving the tombstone (a no-op if done before)."""
        await self.stock.update_one(
            {"_id": sku, f"holds.{order_id}.owner": owner},
            {
                "$inc": {"reserved": -quantity, "sold": quantity},
                "$unset": {f"holds.{order_id}": ""},
                "$set": {f"settled.{order_id}": self._tombstone("committed", quantity)},
            },
        )

    async def return_sold(self, sku: str, order_id: str, quantity: int) -> None:
        """Sold, then the order was cancelled: back to available, once."""
        await self.stock.update_one(
            {"_id": sku, f"settled.{order_id}.state": "committed"},
            {
                "$inc": {"sold": -quantity, "available": quantity},
                "$set": {f"settled.{order_id}": self._tombstone("returned", quantity)},
            },
        )

    async def settle_without_stock(self, sku: str, order_id: str, state: str) -> None:
        """Make sure the order holds nothing here (whoever took it) and leave its tombstone."""
        for _ in range(5):
            doc = await self.stock.find_one({"_id": sku}, {f"holds.{order_id}": 1})
            if doc is None:
                return
            held = _entry(doc, "holds", order_id)
            if held is not None:
                if await self.release(
                    sku, order_id, held["owner"], held["quantity"], settle_as=state
                ):
                    return
                continue  # the hold changed under us: look again
            result = await self.stock.update_one(
                {"_id": sku, f"holds.{order_id}": {"$exists": False}},
                {"$set": {f"settled.{order_id}": self._tombstone(state, 0)}},
            )
            if result.modified_count == 1:
                return
        raise RuntimeError(f"{sku}: the hold of {order_id} keeps changing")

    def _tombstone(self, state: str, quantity: int) -> dict[str, Any]:
        return {"state": state, "quantity": quantity, "at": utcnow_iso()}

    # --- reservations: the decision per order, written once ------------------------------

    async def get_reservation(self, order_id: str) -> Reservation | None:
        doc = await self.reservations.find_one({"_id": order_id})
        return Reservation.from_document(doc) if doc else None

    # --8<-- [start:record-decision]
    async def claim(self, order_id: str, owner: str, lines: Mapping[str, int]) -> Reservation:
        """Claim the right to decide this order's reservation, before touching any stock.

        Returns the reservation as it stands: ``claimed_by(owner)`` means the caller may go
        ahead; a decided state means it was decided before; another owner with a live lease
        means a duplicate delivery is deciding right now. A lease left by a delivery that died
        or froze mid-way is taken over once it runs out.
        """
        now = self.now()
        claim = {
            "state": ReservationState.DECIDING.value,
            "owner": owner,
            "lease_until": now + self.lease_seconds,
            "lines": dict(lines),
        }
        try:
            await self.reservations.insert_one({"_id": order_id, **claim})
            return Reservation.from_document({"_id": order_id, **claim})
        except DuplicateKeyError:
            pass
        await self.reservations.update_one(
            {"_id": order_id, "state": "deciding", "lease_until": {"$lte": now}}, {"$set": claim}
        )
        current = await self.get_reservation(order_id)
        assert current is not None  # reservations are never deleted
        return current

    async def renew(self, order_id: str, owner: str) -> bool:
        """Extend ``owner``'s lease; False if the claim is no longer ``owner``'s (or ran out)."""
        now = self.now()
        result = await self.reservations.update_one(
            {"_id": order_id, "state": "deciding", "owner": owner, "lease_until": {"$gt": now}},
            {"$set": {"lease_until": now + self.lease_seconds}},
        )
        return result.matched_count == 1  # matched: the same lease_until again modifies nothing

    async def take_over(self, order_id: str, owner: str) -> bool:
        """Take a claim whose lease ran out (to cancel the reservation)."""
        now = self.now()
        result = await self.reservations.update_one(
            {"_id": order_id, "state": "deciding", "lease_until": {"$lte": now}},
            {"$set": {"owner": owner, "lease_until": now + self.lease_seconds}},
        )
        return result.modified_count == 1

    async def record_decision(
        self, order_id: str, owner: str, *, state: ReservationState, event: dict[str, Any]
    ) -> bool:
        """Record the outcome (with the event that announces it), if ``owner`` still decides."""
        result = await self.reservations.update_one(
            {
                "_id": order_id,
                "state": "deciding",
                "owner": owner,
                "lease_until": {"$gt": self.now()},
            },
            {"$set": {"state": state.value, "outcome_event": event}},
        )
        return result.modified_count == 1
        # --8<-- [end:record-decision]

    async def record_cancelled(self, order_id: str, event: dict[str, Any]) -> Reservation:
        """The order was cancelled before inventory heard of it: a reservation that is final
        from the start, so a late ``order.placed`` holds nothing. Returns what stands."""
        stands = await insert_first(
            self.reservations,
            {"_id": order_id, "state": "cancelled", "lines": {}, "outcome_event": event},
        )
        current = stands or await self.reservations.find_one({"_id": order_id})
        assert current is not None
        return Reservation.from_document(current)

    async def begin_release(self, order_id: str, event: dict[str, Any]) -> Reservation | None:
        """Mark a reserved order as releasing and fix the id of its ``stock.released`` event.

        Returns the reservation as it now stands (None if there is none).
        """
        await self.reservations.update_one(
            {"_id": order_id, "state": "reserved"},
            {"$set": {"state": "releasing", "release_event": event}},
        )
        return await self.get_reservation(order_id)

    async def set_state(
        self, order_id: str, *, from_state: ReservationState, to_state: ReservationState
    ) -> None:
        await self.reservations.update_one(
            {"_id": order_id, "state": from_state.value}, {"$set": {"state": to_state.value}}
        )
