"""Inventory's reservation rules. Pure: no I/O, no clock -- the caller passes "now".

A **reservation** is inventory's record of one order's stock, keyed by order id. Its states:

==============  =====================================================================
``deciding``    a delivery of ``order.placed`` holds the **claim** (an owner and a lease)
                and is holding stock line by line
``reserved``    every line is held; waiting for the payment outcome
``rejected``    not enough stock; nothing held (final)
``committed``   paid: the held stock is sold (final, unless the order is cancelled late)
``releasing``   payment failed, or the order was cancelled: giving the stock back
``released``    given back (final)
``cancelled``   the order was cancelled before its stock was decided (final)
``returned``    sold, then the order was cancelled (its saga deadline passed): back (final)
==============  =====================================================================

Only the owner of a *live* claim may hold stock for an order, and it checks (renews) its lease
before every write. A delivery that stalled past its lease -- a frozen process, a long GC pause
-- finds the claim gone when it resumes and gives back what it took; the stock it may still
write after that is blocked by the **tombstone** every SKU of the order keeps once the
reservation is final. See :mod:`services.inventory.repository` for the documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.contracts import EventData, OrderCancelled, PaymentFailed, PaymentSucceeded, PricedLine


class ReservationState(StrEnum):
    DECIDING = "deciding"
    RESERVED = "reserved"
    REJECTED = "rejected"
    COMMITTED = "committed"
    RELEASING = "releasing"
    RELEASED = "released"
    CANCELLED = "cancelled"
    RETURNED = "returned"


FINAL_STATES = frozenset(
    {
        ReservationState.REJECTED,
        ReservationState.COMMITTED,
        ReservationState.RELEASED,
        ReservationState.CANCELLED,
        ReservationState.RETURNED,
    }
)


@dataclass(frozen=True)
class Reservation:
    """One order's reservation as stored (a value object: compare, don't mutate)."""

    order_id: str
    state: ReservationState
    lines: Mapping[str, int] = field(default_factory=dict)
    owner: str = ""
    lease_until: float = 0.0
    outcome_event: Mapping[str, Any] | None = None  # stock.reserved / stock.rejected
    release_event: Mapping[str, Any] | None = None  # stock.released

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Reservation:
        return cls(
            order_id=doc["_id"],
            state=ReservationState(doc["state"]),
            lines=dict(doc.get("lines") or {}),
            owner=doc.get("owner", ""),
            lease_until=float(doc.get("lease_until", 0.0)),
            outcome_event=doc.get("outcome_event"),
            release_event=doc.get("release_event"),
        )

    def claimed_by(self, owner: str, now: float) -> bool:
        """``owner`` may hold stock for this order right now."""
        return (
            self.state == ReservationState.DECIDING
            and self.owner == owner
            and now < self.lease_until
        )

    def claim_expired(self, now: float) -> bool:
        return self.state == ReservationState.DECIDING and now >= self.lease_until


def merge_lines(lines: Sequence[PricedLine]) -> dict[str, int]:
    """Quantities per SKU, sorted: the same SKU on two lines is one hold, and every delivery
    holds the SKUs in the same order."""
    merged: dict[str, int] = {}
    for line in lines:
        merged[line.sku] = merged.get(line.sku, 0) + line.quantity
    return dict(sorted(merged.items()))


# --- order.placed: decide once -----------------------------------------------------------------


class Placement(StrEnum):
    DECIDE = "decide"  # we hold a live claim: hold the stock
    ANNOUNCE = "announce"  # decided before (or cancelled): re-announce that outcome
    WAIT = "wait"  # another delivery holds a live claim: retry later


def on_order_placed(reservation: Reservation, me: str, now: float) -> Placement:
    """What a delivery of ``order.placed`` does, given the reservation after its claim attempt."""
    if reservation.claimed_by(me, now):
        return Placement.DECIDE
    if reservation.state == ReservationState.DECIDING:
        return Placement.WAIT
    return Placement.ANNOUNCE


# --- the payment outcome or a cancellation: settle -----------------------------------------------


class Action(StrEnum):
    COMMIT = "commit"  # held -> sold
    RELEASE = "release"  # held -> available (compensation)
    RETURN = "return"  # sold -> available (a cancellation after the sale)
    CANCEL = "cancel"  # nothing decided yet: cancel the reservation (taking over a dead claim)
    NOTHING = "nothing"  # settled before, or nothing to settle
    WAIT = "wait"  # not decided yet: retry later


# --8<-- [start:settle]
def settle(reservation: Reservation | None, outcome: EventData, now: float) -> Action:
    """What a payment outcome or an order cancellation does to the reservation.

    A state machine with guards: a duplicate or late event finds the work done (NOTHING), and
    events arriving in any order end in the same stock levels.
    """
    state = reservation.state if reservation else None
    deciding = state == ReservationState.DECIDING
    match outcome:
        case PaymentSucceeded():
            if state == ReservationState.RESERVED:
                return Action.COMMIT
            # Not decided yet cannot happen in the saga (payment charges after stock.reserved).
            return Action.WAIT if state is None or deciding else Action.NOTHING
        case PaymentFailed():
            if state in (ReservationState.RESERVED, ReservationState.RELEASING):
                return Action.RELEASE
            return Action.WAIT if state is None or deciding else Action.NOTHING
        case OrderCancelled():
            if state in (ReservationState.RESERVED, ReservationState.RELEASING):
                return Action.RELEASE
            if state == ReservationState.COMMITTED:
                return Action.RETURN
            if state is None or (reservation is not None and reservation.claim_expired(now)):
                return Action.CANCEL
            return Action.WAIT if deciding else Action.NOTHING
    return Action.NOTHING
    # --8<-- [end:settle]
