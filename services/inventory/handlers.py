"""Inventory's business functions: message + repository in, events out.

Every function is safe to run twice for the same message. The decision for an order is written
once (``reservations``, keyed by order id) together with the event that announces it; a
redelivered message finds the decision and returns the *same* event (same id), so an outcome
is never lost between "state saved" and "message published", and never announced twice under
two ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import structlog

from services.inventory.repository import StockRepository
from shared.contracts import (
    Envelope,
    OrderPlaced,
    PaymentFailed,
    PaymentSucceeded,
    PricedLine,
    Quote,
    QuotedLine,
    QuoteRequest,
    StockRejected,
    StockReleased,
    StockReserved,
)

SOURCE = "inventory"
log = structlog.get_logger(__name__)


async def quote(request: QuoteRequest, repo: StockRepository) -> Quote:
    """Answer the order service's question: known SKUs, their price, how many are available."""
    found = await repo.find_skus(line.sku for line in request.lines)
    return Quote(
        lines=tuple(
            QuotedLine(
                sku=line.sku,
                quantity=line.quantity,
                known=line.sku in found,
                unit_price_cents=found[line.sku]["price_cents"] if line.sku in found else 0,
                available=found[line.sku]["available"] if line.sku in found else 0,
            )
            for line in request.lines
        )
    )


def _merge_lines(lines: Sequence[PricedLine]) -> dict[str, int]:
    """Quantities per SKU; the same SKU on two lines is one hold."""
    merged: dict[str, int] = {}
    for line in lines:
        merged[line.sku] = merged.get(line.sku, 0) + line.quantity
    return dict(sorted(merged.items()))


class DecisionInProgressError(Exception):
    """Another delivery of the same order is deciding its reservation right now; retry later."""


# --8<-- [start:reserve-stock]
async def reserve_stock(
    envelope: Envelope, placed: OrderPlaced, repo: StockRepository
) -> list[Envelope]:
    """Reserve every line of a placed order, or none of them.

    First claim the decision, so that two deliveries of the same order (a redelivery while the
    first is still running) never hold stock side by side; then hold line by line; then record
    the outcome together with the event that announces it.
    """
    order_id, owner = placed.order_id, str(uuid.uuid4())
    claim = await repo.claim_decision(order_id, owner)
    if claim["state"] != "deciding":
        # Decided before: re-announce the same event, never decide again.
        return [Envelope.model_validate(claim["outcome_event"])]
    if claim["owner"] != owner:
        raise DecisionInProgressError(f"order {order_id} is being decided by another delivery")

    wanted = _merge_lines(placed.lines)
    held: dict[str, int] = {}
    shortages: dict[str, int] = {}
    for sku, quantity in wanted.items():
        # "Held" includes a hold left by an earlier attempt of ours that died half-way.
        if await repo.hold(sku, order_id, quantity):
            held[sku] = quantity
        else:
            shortages[sku] = quantity
            break

    if shortages:
        # All or nothing: give back what this order managed to hold.
        for sku, quantity in held.items():
            await repo.release_hold(sku, order_id, quantity)
        event = Envelope.wrap(
            StockRejected(order_id=order_id, reason="insufficient stock", shortages=shortages),
            source=SOURCE,
            causation=envelope,
        )
        state = "rejected"
    else:
        event = Envelope.wrap(
            StockReserved(
                order_id=order_id,
                lines=placed.lines,
                amount_cents=placed.total_cents,
                payment_token=placed.payment_token,
            ),
            source=SOURCE,
            causation=envelope,
        )
        state = "reserved"

    if not await repo.record_decision(
        order_id, owner, state=state, lines=wanted, event=event.model_dump(mode="json")
    ):
        # Our claim expired and another delivery took over: let it (or its record) stand.
        raise DecisionInProgressError(f"order {order_id}: lost the claim while deciding")
    log.info("reservation decided", order_id=order_id, state=state)
    return [event]
    # --8<-- [end:reserve-stock]


# --8<-- [start:settle-reservation]
async def settle_reservation(
    envelope: Envelope, outcome: PaymentSucceeded | PaymentFailed, repo: StockRepository
) -> list[Envelope]:
    """Payment decided: commit the held stock (sold), or release it (compensation)."""
    order_id = outcome.order_id
    reservation = await repo.get_reservation(order_id)
    if reservation is None or reservation["state"] == "deciding":
        # Payment only charges after stock.reserved, which is sent after the decision is
        # recorded: this cannot happen in the saga. Retry (and end in the DLQ) if it does.
        raise DecisionInProgressError(
            f"payment outcome for order {order_id} before its reservation"
        )

    lines: dict[str, int] = reservation["lines"]
    if isinstance(outcome, PaymentSucceeded):
        if reservation["state"] == "reserved":
            for sku, quantity in lines.items():
                await repo.commit_hold(sku, order_id, quantity)
            await repo.set_state(order_id, from_state="reserved", to_state="committed")
        return []

    # Compensation. Fix the event id first, so a redelivery re-announces the same release.
    if reservation["state"] == "reserved":
        release = Envelope.wrap(
            StockReleased(order_id=order_id, reason=f"payment failed: {outcome.reason}"),
            source=SOURCE,
            causation=envelope,
            sequence=2,
        )
        reservation = await repo.begin_release(order_id, release.model_dump(mode="json")) or {}
    if reservation.get("state") == "releasing":
        for sku, quantity in lines.items():
            await repo.release_hold(sku, order_id, quantity)
        await repo.set_state(order_id, from_state="releasing", to_state="released")
    if reservation.get("release_event"):
        return [Envelope.model_validate(reservation["release_event"])]
    return []
    # --8<-- [end:settle-reservation]
