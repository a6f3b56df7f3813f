"""The order service's use cases: place an order, follow the saga, expire overdue orders,
rebuild the read model -- and its handler table.

Plain functions with their dependencies as arguments, bundled in :class:`OrderDeps`; the
HTTP routes and the subscriber only translate to and from these.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from opentelemetry.instrumentation.utils import suppress_instrumentation

from services.order.domain import (
    SAGA_DEADLINE_REASON,
    Order,
    OrderEvent,
    TooEarlyError,
    expire,
    react,
)
from services.order.repository import (
    ConcurrencyError,
    EventStore,
    IdempotencyKeys,
    OrderViews,
    to_events,
)
from shared import topology
from shared.contracts import (
    Envelope,
    EventData,
    OrderLine,
    OrderPlaced,
    PaymentFailed,
    PaymentSucceeded,
    PricedLine,
    Quote,
    QuoteRequest,
    StockRejected,
    StockReleased,
    StockReserved,
)
from shared.faults import crash_point
from shared.handlers import HandlerTable
from shared.messaging import HeldBackError, handled_before
from shared.metrics import ORDERS_FINISHED, SAGA_DURATION
from shared.observability import current_trace_context, order_context
from shared.sealing import RecipientKey

log = structlog.get_logger(__name__)

QuoteFn = Callable[[QuoteRequest], Awaitable[Quote]]


@dataclass
class OrderDeps:
    store: EventStore
    views: OrderViews
    keys: IdempotencyKeys
    # Asks inventory for a quote (request-reply); raises QuoteUnavailableError.
    quote: QuoteFn
    # Hands the outbox relay the documents just stored: it publishes the pending ones at once.
    wake_relay: Callable[[Sequence[dict[str, Any]]], None]
    # Payment's public key: the payment token is sealed for it, and only payment can open it.
    payment_key: RecipientKey
    # An order not final this long after it was placed is cancelled (and compensated).
    saga_deadline_seconds: float = 600.0
    # Seconds until the outbox relay tries again after the broker pushed back (0: it does not).
    pushed_back: Callable[[], float] = lambda: 0.0

    async def create_indexes(self) -> None:
        for repository in (self.store, self.views, self.keys):
            await repository.create_indexes()


@dataclass(frozen=True)
class PlaceOrder:
    customer_id: str
    lines: tuple[OrderLine, ...]
    payment_token: str

    def fingerprint(self) -> str:
        body = {
            "customer_id": self.customer_id,
            "lines": [line.model_dump() for line in self.lines],
            "payment_token": self.payment_token,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Placed:
    order_id: str


class QuoteUnavailableError(Exception):
    """Inventory did not answer the quote in time (or the broker is unreachable)."""


class BackloggedError(Exception):
    """The broker pushes back (a queue the order's events go to is full): no new order now."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the shop is behind on its orders; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class UnknownSkuError(Exception):
    def __init__(self, skus: list[str]) -> None:
        super().__init__(f"unknown SKU(s): {', '.join(skus)}")
        self.skus = skus


class IdempotencyConflictError(Exception):
    """The Idempotency-Key was already used with a different request body."""


async def project(order_id: str, events: Sequence[OrderEvent], deps: OrderDeps) -> Order:
    """Bring the read model of one order up to date with its events (all of them, in order)."""
    order = Order.from_events(order_id, list(events))
    await deps.views.save(order)
    return order


async def _project_if_possible(
    order_id: str, events: Sequence[OrderEvent], deps: OrderDeps
) -> None:
    """Project a recorded order; a failure is logged, not raised (the order exists: the read
    model catches up with the saga's next event, or the client's retry)."""
    try:
        await project(order_id, events, deps)
    except Exception as exc:
        log.error("order placed, but not yet projected", order_id=order_id, error=repr(exc))


# --8<-- [start:place-order]
async def place_order(command: PlaceOrder, deps: OrderDeps, *, idempotency_key: str) -> Placed:
    """Accept an order once per ``idempotency_key``, however often the request is retried.

    The key is bound to a new order id *before* anything else happens, so a retry after any
    failure -- a quote timeout, a database error, the process killed mid-request -- finds the
    binding and carries on with the same order id instead of placing a second order.
    """
    fingerprint, new_id = command.fingerprint(), str(uuid.uuid4())
    with order_context(new_id):  # the order this request will place, unless it is a retry
        binding = await deps.keys.claim(idempotency_key, new_id, fingerprint)
    if binding["request_hash"] != fingerprint:
        raise IdempotencyConflictError(idempotency_key)
    order_id = binding["order_id"]
    if order_id != new_id and await deps.store.exists(order_id):
        # A retry of a request that got as far as the append: the same order. Its read model
        # may be missing (the first request died before projecting it): make sure it is not.
        await _project_if_possible(order_id, await deps.store.load(order_id), deps)
        return Placed(order_id=order_id)
    with order_context(order_id):
        return await _accept(order_id, command, deps, idempotency_key)
    # --8<-- [end:place-order]


async def _accept(
    order_id: str, command: PlaceOrder, deps: OrderDeps, idempotency_key: str
) -> Placed:
    """Quote, then record ``order.placed`` (in the event store, which is also the outbox)."""
    # --8<-- [start:backlogged]
    if wait := deps.pushed_back():
        # The outbox could hold the order, but the queues after it are full: taking more would
        # only move the backlog into the database. The client retries with the same key.
        raise BackloggedError(wait)
    # --8<-- [end:backlogged]
    quote = await deps.quote(QuoteRequest(lines=command.lines))
    if quote.unknown_skus:
        await deps.keys.forget(idempotency_key, order_id)
        raise UnknownSkuError(quote.unknown_skus)

    placed = OrderPlaced(
        order_id=order_id,
        customer_id=command.customer_id,
        lines=tuple(
            PricedLine(sku=line.sku, quantity=line.quantity, unit_price_cents=line.unit_price_cents)
            for line in quote.lines
        ),
        total_cents=quote.total_cents,
        # Sealed for payment and bound to this order: the clear token goes no further.
        sealed_payment_token=deps.payment_key.seal(command.payment_token, aad=order_id),
    )
    # --8<-- [start:record-order-placed]
    try:
        appended = await deps.store.append(
            order_id,
            0,
            [placed],
            trace_context=current_trace_context(),
            saga_deadline=datetime.now(UTC) + timedelta(seconds=deps.saga_deadline_seconds),
        )
    except ConcurrencyError:
        # The same Idempotency-Key, twice at the same moment: the other request won.
        return Placed(order_id=order_id)
    crash_point("order.after-append")  # saved, not yet published: the outbox must cover this
    # --8<-- [end:record-order-placed]
    # --8<-- [start:after-append]
    # The order exists from here on: whatever fails now, the answer is 202 with this order.
    # (The outbox publishes it; the read model catches up with the saga's next event.)
    deps.wake_relay(appended)  # hands the documents over: no I/O, cannot fail
    await _project_if_possible(order_id, to_events(appended), deps)
    # --8<-- [end:after-append]
    log.info("order placed", order_id=order_id, total_cents=placed.total_cents)
    return Placed(order_id=order_id)


# --8<-- [start:follow-saga]
async def follow_saga(envelope: Envelope, incoming: EventData, deps: OrderDeps) -> list[Envelope]:
    """Apply a saga event (stock/payment outcome) to its order. Idempotent by state guards.

    Returns nothing to publish directly: the order's own events leave through the outbox.
    """
    order_id = incoming.order_id
    # This process's copy of the stream first (no read when it placed the order and took every
    # step since); the database's whenever the copy may be behind. See EventStore.load.
    recent = True
    for _ in range(10):
        events = await deps.store.load(order_id, recent=recent)
        if not events:
            log.warning("saga event for an unknown order", order_id=order_id, type=envelope.type)
            return []
        order = Order.from_events(order_id, events)
        try:
            decided = react(order, incoming)
        except TooEarlyError as exc:
            if recent:
                recent = False  # early for the copy: perhaps not for the database
                continue
            raise HeldBackError(str(exc)) from exc  # round the delay queue, no attempt used
        if not decided:
            if envelope.id in order.answered:  # true of the copy, true of the database
                handled_before()  # acted on before: a duplicate (a late reply is not one)
            elif recent:
                recent = False  # nothing to do for the copy: perhaps not for the database
                continue
            break
        try:
            appended = await deps.store.append(
                order_id,
                order.version,
                decided,
                causation=envelope,
                trace_context=current_trace_context(),
                published_before=order.last_published,
            )
        except ConcurrencyError:
            recent = False  # someone else moved the order on: decide again from the new state
            continue
        deps.wake_relay(appended)
        for event in to_events(appended):
            order.apply(event)
        if order.is_final:
            measure_finished(order)  # this event ended it (a duplicate would append nothing)
        break
    else:
        raise ConcurrencyError(f"order {order_id}: too much contention")
    # Also on a duplicate: a crash may have come between an earlier append and its projection.
    await deps.views.save(order)
    if order.is_final:
        await deps.store.close_saga(order_id)
    log.info("saga step", order_id=order_id, on=envelope.type, status=order.status.value)
    return []
    # --8<-- [end:follow-saga]


# --8<-- [start:expire-overdue]
async def expire_overdue_orders(deps: OrderDeps, *, limit: int = 100) -> int:
    """Cancel every order whose saga is still open past its deadline. Returns how many.

    Nothing stays non-final for ever: whatever got stuck -- a message in a DLQ, a service
    down for longer than the retry budget -- the order ends CANCELLED, and its cancellation
    makes inventory and payment undo what they did.
    """
    with suppress_instrumentation():  # a sweep every few seconds: not part of any order's trace
        overdue = await deps.store.overdue_sagas(datetime.now(UTC), limit)
    cancelled = 0
    for order_id in overdue:
        with order_context(order_id):
            try:
                cancelled += await _expire(order_id, deps)
            except Exception as exc:  # this order only: the others are not held up by it
                log.error("could not expire an overdue order", order_id=order_id, error=repr(exc))
    return cancelled
    # --8<-- [end:expire-overdue]


async def _expire(order_id: str, deps: OrderDeps) -> int:
    """Cancel one overdue order unless a saga event ended it meanwhile; 1 if cancelled."""
    expired = 0
    for _ in range(10):
        order = Order.from_events(order_id, await deps.store.load(order_id))
        decided = expire(order)
        if not decided:
            break
        try:
            appended = await deps.store.append(
                order_id,
                order.version,
                decided,
                trace_context=current_trace_context(),
                published_before=order.last_published,
            )
        except ConcurrencyError:
            continue  # a saga event moved it on meanwhile: look again
        deps.wake_relay(appended)
        for event in to_events(appended):
            order.apply(event)
        expired = 1
        measure_finished(order)
        log.warning("saga deadline passed: order cancelled", order_id=order_id)
        break
    await deps.views.save(order)
    if order.is_final:
        await deps.store.close_saga(order_id)
    return expired


# --8<-- [start:saga-metrics]
def measure_finished(order: Order) -> None:
    """Count an order that has just reached its final state, by why, and time its saga
    (warren_orders_finished_total, warren_saga_duration_seconds)."""
    state = order.status.value
    ORDERS_FINISHED.add(1, {"state": state, "reason": reason_kind(order)})
    if order.placed_at is not None:
        took = (datetime.now(UTC) - order.placed_at).total_seconds()
        SAGA_DURATION.record(max(0.0, took), {"state": state})


# Every (state, reason) pair an order can end with: counted from zero at start-up, so that the
# first of each is an increase Prometheus sees (a series born at 1 shows no increase).
FINISHED_KINDS = (
    ("CONFIRMED", "none"),
    *(("CANCELLED", reason) for reason in ("out_of_stock", "payment_failed", "deadline", "other")),
)


def count_finished_from_zero() -> None:
    for state, reason in FINISHED_KINDS:
        ORDERS_FINISHED.add(0, {"state": state, "reason": reason})


def reason_kind(order: Order) -> str:
    """Why the order ended, as one of a few label values (the reason's text varies)."""
    if order.cancel_reason is None:
        return "none"
    if order.cancel_reason == SAGA_DEADLINE_REASON:
        return "deadline"
    if order.payment_failure:
        return "payment_failed"
    if order.cancel_reason.startswith("stock rejected"):
        return "out_of_stock"
    return "other"
    # --8<-- [end:saga-metrics]


# --8<-- [start:deadline-watch]
async def watch_deadlines(deps: OrderDeps, *, every: float) -> None:
    """The saga deadline sweep, every ``every`` seconds while the service runs."""
    while True:
        try:
            await expire_overdue_orders(deps)
        except Exception as exc:  # the database is away: try again next round
            log.warning("saga deadline sweep failed", error=repr(exc))
        await asyncio.sleep(every)
        # --8<-- [end:deadline-watch]


# --8<-- [start:rebuild]
async def rebuild_projections(store: EventStore, views: OrderViews) -> int:
    """Throw the read model away and replay every event into it. Returns orders rebuilt."""
    await views.clear()
    rebuilt = 0
    current: Order | None = None
    async for order_id, event in store.all_events():
        if current is None or current.id != order_id:
            if current is not None:
                await views.save(current)
                rebuilt += 1
            current = Order(id=order_id)
        current.apply(event)
    if current is not None:
        await views.save(current)
        rebuilt += 1
    return rebuilt
    # --8<-- [end:rebuild]


# --8<-- [start:handler-table]
HANDLERS: HandlerTable[OrderDeps] = {
    topology.ORDER_SAGA_REPLIES: {
        StockReserved: follow_saga,
        StockRejected: follow_saga,
        StockReleased: follow_saga,
        PaymentSucceeded: follow_saga,
        PaymentFailed: follow_saga,
    },
}
# --8<-- [end:handler-table]
