"""Inventory's business functions, and its handler table: an event and the deps in, events out.

Every function is safe to run twice for the same message. The decision for an order is written
once (``reservations``, keyed by order id) together with the event that announces it; a
redelivered message finds the decision and returns the *same* event (same id), so an outcome
is never lost between "state saved" and "message published", and never announced twice under
two ids.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog

from services.inventory.domain import (
    Action,
    Placement,
    Reservation,
    ReservationState,
    merge_lines,
    on_order_placed,
    settle,
)
from services.inventory.repository import Hold, HoldOutcome, StockRepository
from shared import topology
from shared.contracts import (
    Envelope,
    OrderCancelled,
    OrderPlaced,
    PaymentFailed,
    PaymentSucceeded,
    Quote,
    QuotedLine,
    QuoteRequest,
    StockRejected,
    StockReleased,
    StockReserved,
)
from shared.handlers import HandlerTable
from shared.messaging import handled_before

SOURCE = "inventory"
log = structlog.get_logger(__name__)


@dataclass
class InventoryDeps:
    stock: StockRepository


async def quote(request: QuoteRequest, deps: InventoryDeps) -> Quote:
    """Answer the order service's question: known SKUs, their price, how many are available."""
    found = await deps.stock.find_skus(line.sku for line in request.lines)
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


class DecisionInProgressError(Exception):
    """Another delivery of the same order is deciding its reservation right now; retry later."""


class LeaseLostError(Exception):
    """Our claim ran out and another delivery took it over: stop, give back what we took."""


# --8<-- [start:reserve-stock]
async def reserve_stock(
    envelope: Envelope, placed: OrderPlaced, deps: InventoryDeps
) -> list[Envelope]:
    """Reserve every line of a placed order, or none of them.

    First claim the decision, so that two deliveries of the same order (a redelivery while the
    first is still running) never hold stock side by side; then hold line by line, renewing
    the claim's lease before each write; then record the outcome together with the event that
    announces it. A delivery that loses its claim half-way gives back what it took.
    """
    repo, order_id, me = deps.stock, placed.order_id, str(uuid.uuid4())
    wanted = merge_lines(placed.lines)
    reservation = await repo.claim(order_id, me, wanted)
    match on_order_placed(reservation, me, repo.now()):
        case Placement.ANNOUNCE:  # decided before: re-announce the same event, never decide again
            handled_before()
            return [Envelope.model_validate(reservation.outcome_event)]
        case Placement.WAIT:
            raise DecisionInProgressError(f"order {order_id} is being decided by another delivery")

    held: dict[str, int] = {}
    try:
        shortages = await _hold_every_line(order_id, me, wanted, held, repo)
        if shortages:
            # All or nothing: give back what this order managed to hold.
            await _give_back(order_id, me, held, repo)
            event = Envelope.wrap(
                StockRejected(order_id=order_id, reason="insufficient stock", shortages=shortages),
                source=SOURCE,
                causation=envelope,
            )
            state = ReservationState.REJECTED
        else:
            event = Envelope.wrap(
                StockReserved(
                    order_id=order_id,
                    lines=placed.lines,
                    amount_cents=placed.total_cents,
                    sealed_payment_token=placed.sealed_payment_token,  # as it came: sealed
                ),
                source=SOURCE,
                causation=envelope,
            )
            state = ReservationState.RESERVED
        if not await repo.record_decision(
            order_id, me, state=state, event=event.model_dump(mode="json")
        ):
            raise LeaseLostError(order_id)
    except LeaseLostError:
        # Another delivery decides now (or has decided): let it stand, take nothing with us.
        await _give_back(order_id, me, held, repo)
        raise DecisionInProgressError(f"order {order_id}: lost the claim while deciding") from None
    if state == ReservationState.REJECTED:
        for sku in wanted:
            await repo.settle_without_stock(sku, order_id, state.value)
    log.info("reservation decided", order_id=order_id, state=state.value)
    return [event]
    # --8<-- [end:reserve-stock]


async def _hold_every_line(
    order_id: str, me: str, wanted: dict[str, int], held: dict[str, int], repo: StockRepository
) -> dict[str, int]:
    """Hold each SKU in turn (filling ``held``); returns the first shortage, if any."""
    for sku, quantity in wanted.items():
        if not await repo.renew(order_id, me):
            raise LeaseLostError(order_id)
        for _ in range(3):
            hold = await repo.hold(sku, order_id, me, quantity)
            if hold.outcome == HoldOutcome.OTHER_OWNER:
                # A delivery whose claim ran out held this line: ours now -- if the claim is
                # still ours (we may be the one that stalled).
                if not await repo.renew(order_id, me):
                    raise LeaseLostError(order_id)
                if not await repo.adopt(sku, order_id, hold.owner, me):
                    continue  # it changed under us: look again
                hold = Hold(HoldOutcome.HELD, me)
            break
        match hold.outcome:
            case HoldOutcome.HELD:
                held[sku] = quantity
            case HoldOutcome.SHORT:
                return {sku: quantity}
            case _:  # settled, or a hold that keeps changing hands: we are the stale one
                raise LeaseLostError(order_id)
    return {}


async def _give_back(order_id: str, me: str, held: dict[str, int], repo: StockRepository) -> None:
    for sku, quantity in held.items():
        await repo.release(sku, order_id, me, quantity)  # only our own holds
    held.clear()


# --8<-- [start:settle-reservation]
async def settle_reservation(
    envelope: Envelope,
    outcome: PaymentSucceeded | PaymentFailed | OrderCancelled,
    deps: InventoryDeps,
) -> list[Envelope]:
    """Payment decided, or the order was cancelled: commit the held stock (sold), release it
    (compensation), or -- for an order cancelled after its sale -- return it."""
    repo, order_id = deps.stock, outcome.order_id
    reservation = await repo.get_reservation(order_id)
    match settle(reservation, outcome, repo.now()):
        case Action.WAIT:
            raise DecisionInProgressError(
                f"{envelope.type} for order {order_id} before its decision"
            )
        case Action.CANCEL:
            return await _cancel_undecided(envelope, order_id, reservation, repo)
        case Action.COMMIT:
            assert reservation is not None
            for sku, quantity in reservation.lines.items():
                await repo.commit(sku, order_id, reservation.owner, quantity)
            await repo.set_state(
                order_id, from_state=ReservationState.RESERVED, to_state=ReservationState.COMMITTED
            )
        case Action.RETURN:
            assert reservation is not None
            for sku, quantity in reservation.lines.items():
                await repo.return_sold(sku, order_id, quantity)
            await repo.set_state(
                order_id, from_state=ReservationState.COMMITTED, to_state=ReservationState.RETURNED
            )
        case Action.RELEASE:
            assert reservation is not None
            await _release(envelope, outcome, reservation, repo)
    if isinstance(outcome, PaymentFailed | OrderCancelled):
        # Announced (again, with the same id) on every delivery of the event that caused it: a
        # redelivery after a crash must not lose it. (Not for a later event: the order.cancelled
        # that follows a declined payment's release is no news to anyone.)
        settled = await repo.get_reservation(order_id)
        if settled is not None and settled.release_event:
            release = Envelope.model_validate(settled.release_event)
            if release.causation_id == envelope.id:
                return [release]
    return []
    # --8<-- [end:settle-reservation]


async def _release(
    envelope: Envelope,
    outcome: PaymentSucceeded | PaymentFailed | OrderCancelled,
    reservation: Reservation,
    repo: StockRepository,
) -> None:
    """Give the held stock back (the compensation), announcing it with ``stock.released``."""
    order_id = reservation.order_id
    if reservation.state == ReservationState.RESERVED:
        # Fix the event id first, so a redelivery re-announces the same release.
        reason = getattr(outcome, "reason", "")
        release = Envelope.wrap(
            StockReleased(
                order_id=order_id,
                reason=f"payment failed: {reason}"
                if isinstance(outcome, PaymentFailed)
                else f"order cancelled: {reason}",
            ),
            source=SOURCE,
            causation=envelope,
            sequence=2,
        )
        released = await repo.begin_release(order_id, release.model_dump(mode="json"))
        assert released is not None
        reservation = released
    if reservation.state == ReservationState.RELEASING:
        for sku, quantity in reservation.lines.items():
            await repo.release(sku, order_id, reservation.owner, quantity, settle_as="released")
        await repo.set_state(
            order_id, from_state=ReservationState.RELEASING, to_state=ReservationState.RELEASED
        )


async def _cancel_undecided(
    envelope: Envelope, order_id: str, reservation: Reservation | None, repo: StockRepository
) -> list[Envelope]:
    """The order was cancelled (its saga deadline passed) before its stock was decided.

    Nothing decided yet: a reservation that is final from the start. A claim that ran out
    (its delivery died or froze): take it over, give back whatever it held, and cancel.
    """
    event = Envelope.wrap(
        StockRejected(order_id=order_id, reason="order cancelled before its stock was reserved"),
        source=SOURCE,
        causation=envelope,
    ).model_dump(mode="json")
    if reservation is None:
        await repo.record_cancelled(order_id, event)
        return []
    me = str(uuid.uuid4())
    if not await repo.take_over(order_id, me):
        raise DecisionInProgressError(f"order {order_id}: its claim was renewed meanwhile")
    for sku in reservation.lines:
        await repo.settle_without_stock(sku, order_id, ReservationState.CANCELLED.value)
    if not await repo.record_decision(order_id, me, state=ReservationState.CANCELLED, event=event):
        raise DecisionInProgressError(f"order {order_id}: lost the claim while cancelling")
    return []


# --8<-- [start:handler-table]
HANDLERS: HandlerTable[InventoryDeps] = {
    topology.INVENTORY_ORDER_PLACED: {OrderPlaced: reserve_stock},
    topology.INVENTORY_PAYMENT_OUTCOMES: {
        PaymentSucceeded: settle_reservation,
        PaymentFailed: settle_reservation,
    },
    topology.INVENTORY_ORDER_CANCELLED: {OrderCancelled: settle_reservation},
}
# --8<-- [end:handler-table]
