"""Repository behaviour on both backends: the MongoDB stand-in over the wire, and mongomock.

Each test runs twice (``db`` is parametrized): once through PyMongo's async client against
``nx-27017`` (or a real MongoDB with ``MONGO_URL``), once against ``mongomock`` as a semantic
oracle. Both must give the asserted answer, so a divergence of the stand-in fails a test.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest
from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic

from services.inventory import handlers as inventory
from services.inventory.catalog import CatalogItem
from services.inventory.handlers import InventoryDeps
from services.inventory.repository import HoldOutcome, StockRepository
from services.notification.repository import NotificationRepository, OrderStream
from services.order.domain import Order, OrderStockReserved
from services.order.handlers import OrderDeps, PlaceOrder, place_order, rebuild_projections
from services.order.repository import (
    ConcurrencyError,
    EventStore,
    IdempotencyKeys,
    OrderViews,
)
from services.payment import handlers as payment
from services.payment.gateway import SimulatedGateway
from services.payment.handlers import PaymentDeps
from services.payment.repository import PaymentRepository
from shared.clock import DatabaseClock
from shared.contracts import (
    Envelope,
    EventData,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
    OrderPlacedV1,
    PaymentFailed,
    PaymentSucceeded,
    PricedLine,
    Quote,
    QuotedLine,
    StockReserved,
)
from shared.ordering import KeyState
from shared.outbox import OutboxRelay, outbox_stats, retry_parked
from shared.sealing import UnknownKeyError, generate_key, seal
from tests.support.events import order_placed
from tests.support.recording import Recording
from tests.support.sealing import PAYMENT_KEYS, PAYMENT_RECIPIENT, sealed_token

MUGS = CatalogItem("CARROT-MUG", "Carrot-shaped mug", 1250, 10)
LAMPS = CatalogItem("BURROW-LAMP", "Burrow night lamp", 4500, 3)
LAMPS_10 = CatalogItem("BURROW-LAMP", "Burrow night lamp", 4500, 10)


def placed(order_id: str, *lines: tuple[CatalogItem, int], token: str = "tok_visa") -> Envelope:
    priced = tuple(
        PricedLine(sku=i.sku, quantity=q, unit_price_cents=i.price_cents) for i, q in lines
    )
    return Envelope.wrap(
        OrderPlaced(
            order_id=order_id,
            customer_id="bugs-bunny",
            lines=priced,
            total_cents=sum(p.quantity * p.unit_price_cents for p in priced),
            sealed_payment_token=sealed_token(order_id, token),
        ),
        source="order",
    )


async def levels(repo: StockRepository) -> dict[str, tuple[int, int, int]]:
    return {d["_id"]: (d["available"], d["reserved"], d["sold"]) for d in await repo.all_stock()}


# --- inventory ---------------------------------------------------------------------------------


async def test_reserving_holds_every_line_and_a_duplicate_re_announces_the_same_event(
    db: Any,
) -> None:
    repo = StockRepository(db)
    await repo.seed([MUGS, LAMPS])
    order = placed("o1", (MUGS, 2), (LAMPS, 1))

    first = await inventory.reserve_stock(order, order.payload(), InventoryDeps(repo))  # type: ignore[arg-type]
    again = await inventory.reserve_stock(order, order.payload(), InventoryDeps(repo))  # type: ignore[arg-type]

    assert [e.type for e in first] == ["stock.reserved"]
    assert again[0].id == first[0].id
    assert await levels(repo) == {"BURROW-LAMP": (2, 1, 0), "CARROT-MUG": (8, 2, 0)}


async def test_an_order_larger_than_stock_holds_nothing(db: Any) -> None:
    repo = StockRepository(db)
    await repo.seed([MUGS, LAMPS])
    order = placed("o1", (MUGS, 2), (LAMPS, 4))

    outcome = await inventory.reserve_stock(order, order.payload(), InventoryDeps(repo))  # type: ignore[arg-type]

    assert [e.type for e in outcome] == ["stock.rejected"]
    assert outcome[0].data["shortages"] == {"BURROW-LAMP": 4}
    assert await levels(repo) == {"BURROW-LAMP": (3, 0, 0), "CARROT-MUG": (10, 0, 0)}


async def test_payment_success_commits_and_failure_releases_once(db: Any) -> None:
    repo = StockRepository(db)
    await repo.seed([MUGS])
    for order_id in ("paid", "declined"):
        order = placed(order_id, (MUGS, 3))
        await inventory.reserve_stock(order, order.payload(), InventoryDeps(repo))  # type: ignore[arg-type]

    ok = Envelope.wrap(
        PaymentSucceeded(order_id="paid", payment_id="ch", amount_cents=1), source="payment"
    )
    ko = Envelope.wrap(PaymentFailed(order_id="declined", reason="card declined"), source="payment")
    assert await inventory.settle_reservation(ok, ok.payload(), InventoryDeps(repo)) == []  # type: ignore[arg-type]
    released = await inventory.settle_reservation(ko, ko.payload(), InventoryDeps(repo))  # type: ignore[arg-type]
    # Redelivered: nothing moves again, and the release is re-announced with the same id.
    assert await inventory.settle_reservation(ok, ok.payload(), InventoryDeps(repo)) == []  # type: ignore[arg-type]
    released_again = await inventory.settle_reservation(ko, ko.payload(), InventoryDeps(repo))  # type: ignore[arg-type]

    assert [e.type for e in released] == ["stock.released"]
    assert released_again[0].id == released[0].id
    assert await levels(repo) == {"CARROT-MUG": (7, 0, 3)}  # available + reserved + sold == 10


async def test_seeding_again_keeps_levels_unless_reset(db: Any) -> None:
    repo = StockRepository(db)
    await repo.seed([MUGS])
    assert (await repo.hold("CARROT-MUG", "o1", "owner", 4)).outcome == HoldOutcome.HELD
    await repo.seed([MUGS])
    assert await levels(repo) == {"CARROT-MUG": (6, 4, 0)}
    await repo.seed([MUGS], reset=True)
    assert await levels(repo) == {"CARROT-MUG": (10, 0, 0)}


class ManualClock(DatabaseClock):
    """Lease time that moves only when the test says so."""

    def __init__(self) -> None:
        self.time = 1_000_000.0

    def now(self) -> float:
        return self.time


class StallingRepository(StockRepository):
    """Freezes the first delivery right before it holds ``stall_sku``
    (as a SIGSTOP, a GC pause or a lost network would), until the test lets it go."""

    def __init__(self, db: Any, clock: ManualClock, stall_sku: str) -> None:
        super().__init__(db, lease_seconds=30, clock=clock)
        self.stall_sku = stall_sku
        self.stalled = asyncio.Event()
        self.resume = asyncio.Event()
        self.first_owner: str | None = None

    async def hold(self, sku: str, order_id: str, owner: str, quantity: int) -> Any:
        self.first_owner = self.first_owner or owner
        if owner == self.first_owner and sku == self.stall_sku:
            self.stalled.set()
            await self.resume.wait()
        return await super().hold(sku, order_id, owner, quantity)


async def _stale_copy_resumes_after(db: Any, settle_with: EventData | None) -> StallingRepository:
    """Delivery A stalls half-way (the lamps held, about to hold the mugs) past its lease;
    delivery B takes over and reserves; the payment outcome (if any) settles it; A resumes."""
    clock = ManualClock()
    repo = StallingRepository(db, clock, stall_sku="CARROT-MUG")
    await repo.seed([LAMPS_10, MUGS])
    order = placed("o1", (LAMPS_10, 2), (MUGS, 3))  # held in SKU order: lamps, then mugs
    stale = asyncio.create_task(
        inventory.reserve_stock(order, order.payload(), InventoryDeps(repo))
    )  # type: ignore[arg-type]
    await repo.stalled.wait()
    clock.time += 31  # A's lease runs out
    [reserved] = await inventory.reserve_stock(order, order.payload(), InventoryDeps(repo))  # type: ignore[arg-type]
    assert reserved.type == "stock.reserved"
    if settle_with is not None:
        outcome = Envelope.wrap(settle_with, source="payment")
        await inventory.settle_reservation(outcome, outcome.payload(), InventoryDeps(repo))  # type: ignore[arg-type]
    repo.resume.set()
    with pytest.raises(inventory.DecisionInProgressError):
        await stale
    again = await inventory.reserve_stock(order, order.payload(), InventoryDeps(repo))  # type: ignore[arg-type]
    assert again[0].id == reserved.id  # A's redelivery re-announces B's decision
    return repo


async def test_a_stale_delivery_that_resumes_after_the_takeover_leaves_the_reservation_alone(
    db: Any,
) -> None:
    repo = await _stale_copy_resumes_after(db, settle_with=None)
    # B adopted A's lamps: nothing held twice, nothing given back that B counted on.
    assert await levels(repo) == {"BURROW-LAMP": (8, 2, 0), "CARROT-MUG": (7, 3, 0)}
    await assert_holds_balance(repo)


async def test_a_stale_delivery_cannot_take_stock_again_after_the_sale(db: Any) -> None:
    repo = await _stale_copy_resumes_after(
        db, PaymentSucceeded(order_id="o1", payment_id="ch", amount_cents=1)
    )
    assert await levels(repo) == {"BURROW-LAMP": (8, 0, 2), "CARROT-MUG": (7, 0, 3)}
    await assert_holds_balance(repo)


async def test_a_stale_delivery_cannot_take_stock_again_after_the_release(db: Any) -> None:
    repo = await _stale_copy_resumes_after(db, PaymentFailed(order_id="o1", reason="declined"))
    assert await levels(repo) == {"BURROW-LAMP": (10, 0, 0), "CARROT-MUG": (10, 0, 0)}
    await assert_holds_balance(repo)


async def assert_holds_balance(repo: StockRepository) -> None:
    for doc in await repo.all_stock():
        held = sum(hold["quantity"] for hold in (doc.get("holds") or {}).values())
        assert held == doc["reserved"], doc
        assert doc["available"] + doc["reserved"] + doc["sold"] == doc["initial"], doc


async def test_a_cancelled_order_gives_back_held_or_sold_stock_and_is_never_reserved_later(
    db: Any,
) -> None:
    clock = ManualClock()
    repo = StockRepository(db, clock=clock)
    await repo.seed([MUGS])
    for order_id in ("held", "sold"):
        order = placed(order_id, (MUGS, 2))
        await inventory.reserve_stock(order, order.payload(), InventoryDeps(repo))  # type: ignore[arg-type]
    paid = Envelope.wrap(
        PaymentSucceeded(order_id="sold", payment_id="c", amount_cents=1), source="p"
    )
    await inventory.settle_reservation(paid, paid.payload(), InventoryDeps(repo))  # type: ignore[arg-type]
    for order_id in ("held", "sold", "never-placed"):
        cancelled = Envelope.wrap(
            OrderCancelled(order_id=order_id, customer_id="c", reason="saga deadline passed"),
            source="order",
        )
        for _ in range(2):  # a duplicate changes nothing
            await inventory.settle_reservation(cancelled, cancelled.payload(), InventoryDeps(repo))  # type: ignore[arg-type]
    assert await levels(repo) == {"CARROT-MUG": (10, 0, 0)}
    late = placed("never-placed", (MUGS, 1))
    [rejected] = await inventory.reserve_stock(late, late.payload(), InventoryDeps(repo))  # type: ignore[arg-type]
    assert rejected.type == "stock.rejected"
    assert await levels(repo) == {"CARROT-MUG": (10, 0, 0)}
    states = {
        r.order_id: r.state
        for r in [await repo.get_reservation(o) for o in ("held", "sold", "never-placed")]
        if r
    }
    assert states == {"held": "released", "sold": "returned", "never-placed": "cancelled"}
    await assert_holds_balance(repo)


# --- payment -----------------------------------------------------------------------------------


def cancelled_envelope(cancelled: OrderCancelled) -> Envelope:
    return Envelope.wrap(cancelled, source="order")


def reserved_event(order_id: str) -> Envelope:
    return Envelope.wrap(
        StockReserved(
            order_id=order_id,
            lines=(),
            amount_cents=2500,
            sealed_payment_token=sealed_token(order_id),
        ),
        source="inventory",
    )


async def test_an_order_is_charged_once_however_often_it_arrives(db: Any) -> None:
    repo, gateway = PaymentRepository(db), SimulatedGateway(db)
    reserved = Envelope.wrap(
        StockReserved(
            order_id="o1", lines=(), amount_cents=2500, sealed_payment_token=sealed_token("o1")
        ),
        source="inventory",
    )
    outcomes = [
        await payment.charge_reserved_order(
            reserved, reserved.payload(), PaymentDeps(repo, gateway, PAYMENT_KEYS)
        )  # type: ignore[arg-type]
        for _ in range(3)
    ]
    assert {o[0].id for o in outcomes} == {outcomes[0][0].id}
    assert outcomes[0][0].type == "payment.succeeded"
    assert await db["gateway_charges"].count_documents({"status": "captured"}) == 1


async def test_a_cancelled_order_that_was_charged_is_refunded_once(db: Any) -> None:
    repo, gateway = PaymentRepository(db), SimulatedGateway(db)
    order = reserved_event("late")
    [paid] = await payment.charge_reserved_order(
        order, order.payload(), PaymentDeps(repo, gateway, PAYMENT_KEYS)
    )  # type: ignore[arg-type]
    assert paid.type == "payment.succeeded"
    cancelled = OrderCancelled(order_id="late", customer_id="c", reason="saga deadline passed")
    for _ in range(2):  # a duplicate refunds nothing more
        assert (
            await payment.refund_cancelled_order(
                cancelled_envelope(cancelled), cancelled, PaymentDeps(repo, gateway, PAYMENT_KEYS)
            )
            == []
        )
    charges = [d async for d in db["gateway_charges"].find({"order_id": "late"})]
    assert [c["status"] for c in charges] == ["refunded"]
    recorded = await repo.get("late")
    assert recorded is not None and recorded.status == "refunded"


async def test_an_order_cancelled_before_its_charge_is_never_charged(db: Any) -> None:
    repo, gateway = PaymentRepository(db), SimulatedGateway(db)
    cancelled = OrderCancelled(order_id="slow", customer_id="c", reason="saga deadline passed")
    await payment.refund_cancelled_order(
        cancelled_envelope(cancelled), cancelled, PaymentDeps(repo, gateway, PAYMENT_KEYS)
    )
    order = reserved_event("slow")  # still being retried when the deadline passed
    assert (
        await payment.charge_reserved_order(
            order, order.payload(), PaymentDeps(repo, gateway, PAYMENT_KEYS)
        )
        == []
    )  # type: ignore[arg-type]
    assert await db["gateway_charges"].count_documents({}) == 0


async def test_a_declined_card_moves_no_money(db: Any) -> None:
    repo, gateway = PaymentRepository(db), SimulatedGateway(db)
    reserved = Envelope.wrap(
        StockReserved(
            order_id="o2",
            lines=(),
            amount_cents=2500,
            sealed_payment_token=sealed_token("o2", "tok_chargeDeclined"),
        ),
        source="inventory",
    )
    outcome = await payment.charge_reserved_order(
        reserved, reserved.payload(), PaymentDeps(repo, gateway, PAYMENT_KEYS)
    )  # type: ignore[arg-type]
    assert outcome[0].type == "payment.failed"
    assert await db["gateway_charges"].count_documents({"status": "captured"}) == 0
    recorded = await repo.get("o2")
    assert recorded is not None and recorded.amount_cents == 0


def reserved_with(order_id: str, sealed: Any) -> Envelope:
    return Envelope.wrap(
        StockReserved(order_id=order_id, lines=(), amount_cents=2500, sealed_payment_token=sealed),
        source="inventory",
    )


async def test_a_token_sealed_for_another_order_is_declined_without_asking_the_gateway(
    db: Any,
) -> None:
    """A sealed token copied from order o1 into o3's message does not open for o3."""
    repo, gateway = PaymentRepository(db), SimulatedGateway(db)
    moved = reserved_with("o3", sealed_token("o1"))
    [failed] = await payment.charge_reserved_order(
        moved, moved.payload(), PaymentDeps(repo, gateway, PAYMENT_KEYS)
    )  # type: ignore[arg-type]
    assert failed.type == "payment.failed"
    assert failed.data["reason"] == payment.UNREADABLE_TOKEN
    assert await db["gateway_charges"].count_documents({}) == 0


async def test_a_token_sealed_for_a_key_payment_does_not_hold_is_retried_not_declined(
    db: Any,
) -> None:
    """Rotation done in the wrong order (order seals for a key payment has not got yet): the
    message fails and is retried -- then kept in the DLQ -- so nothing is decided without it."""
    repo, gateway = PaymentRepository(db), SimulatedGateway(db)
    early = reserved_with("o4", seal(generate_key().public_key(), "next", "tok_visa", "o4"))
    with pytest.raises(UnknownKeyError, match="'next'"):
        await payment.charge_reserved_order(
            early, early.payload(), PaymentDeps(repo, gateway, PAYMENT_KEYS)
        )  # type: ignore[arg-type]
    assert await repo.get("o4") is None


# --- order: event store, read model, idempotency keys, outbox -------------------------------------


def order_confirmed(order_id: str) -> OrderConfirmed:
    return OrderConfirmed(order_id=order_id, customer_id="bugs-bunny", total_cents=1250)


async def test_two_writers_cannot_append_the_same_version(db: Any) -> None:
    store = EventStore(db)
    await store.create_indexes()
    await store.append("o1", 0, [order_placed("o1")])
    with pytest.raises(ConcurrencyError):  # a second version 1 is refused
        await store.append("o1", 0, [order_placed("o1")])
    assert [e.version for e in await store.load("o1")] == [1]


class BrokenViews(OrderViews):
    async def save(self, order: Order) -> None:
        raise ConnectionError("read model unreachable (simulated)")


async def test_once_an_order_is_recorded_the_answer_is_that_order_whatever_fails_after(
    db: Any,
) -> None:
    """Reproduced: a database error on the read-model update gave a 500, and the client's retry
    placed a second order. Now the order is accepted; a retry with the key gets it back."""
    store, keys = EventStore(db), IdempotencyKeys(db)
    quoted = Quote(
        lines=(
            QuotedLine(
                sku="CARROT-MUG", quantity=1, known=True, unit_price_cents=1250, available=9
            ),
        )
    )

    async def quote(request: Any) -> Quote:
        return quoted

    deps = OrderDeps(
        store=store,
        views=BrokenViews(db),
        keys=keys,
        quote=quote,
        wake_relay=lambda events: None,
        payment_key=PAYMENT_RECIPIENT,
    )
    command = PlaceOrder("bugs-bunny", (OrderLine(sku="CARROT-MUG", quantity=1),), "tok_visa")
    placed = await place_order(command, deps, idempotency_key="k-1")
    retried = await place_order(command, deps, idempotency_key="k-1")
    assert retried == placed
    assert [e.type for e in await store.load(placed.order_id)] == ["order.placed"]
    assert await db["order_events"].count_documents({"type": "order.placed"}) == 1


async def test_the_read_model_never_goes_back_to_an_older_version(db: Any) -> None:
    store, views = EventStore(db), OrderViews(db)
    await store.create_indexes()
    await store.append("o1", 0, [order_placed("o1")])
    await store.append("o1", 1, [OrderStockReserved(order_id="o1")])
    events = await store.load("o1")
    newer, older = Order.from_events("o1", events), Order.from_events("o1", events[:1])

    await views.save(newer)
    await views.save(older)

    view = await views.get("o1")
    assert view is not None and view["version"] == 2 and view["status"] == "RESERVED"


async def test_customer_listing_is_paged_newest_first(db: Any) -> None:
    store, views = EventStore(db), OrderViews(db)
    for n in range(5):
        await store.append(f"o{n}", 0, [order_placed(f"o{n}", customer="daffy")])
        await views.save(Order.from_events(f"o{n}", await store.load(f"o{n}")))
    await store.append("x", 0, [order_placed("x", customer="someone-else")])
    await views.save(Order.from_events("x", await store.load("x")))

    page, total = await views.by_customer("daffy", limit=2, offset=1)
    assert total == 5
    assert [doc["_id"] for doc in page] == ["o3", "o2"]


async def test_replaying_the_events_rebuilds_the_same_read_model(db: Any) -> None:
    store, views = EventStore(db), OrderViews(db)
    for n in range(3):
        await store.append(f"o{n}", 0, [order_placed(f"o{n}")])
        await views.save(Order.from_events(f"o{n}", await store.load(f"o{n}")))
    await store.append("o1", 1, [OrderStockReserved(order_id="o1")])
    await views.save(Order.from_events("o1", await store.load("o1")))
    before = {n: await views.get(f"o{n}") for n in range(3)}

    assert await rebuild_projections(store, views) == 3
    assert {n: await views.get(f"o{n}") for n in range(3)} == before


async def test_an_idempotency_key_binds_to_the_first_order(db: Any) -> None:
    keys = IdempotencyKeys(db)
    await keys.create_indexes()
    first = await keys.claim("key-1", "order-a", "hash")
    second = await keys.claim("key-1", "order-b", "hash")
    assert first["order_id"] == second["order_id"] == "order-a"
    await keys.forget("key-1", "order-a")
    assert (await keys.claim("key-1", "order-c", "hash"))["order_id"] == "order-c"


async def test_the_outbox_publishes_pending_events_in_order_and_only_once(db: Any) -> None:
    store = EventStore(db)
    await store.create_indexes()
    await store.append("o1", 0, [order_placed("o1")])
    await store.append("o1", 1, [OrderStockReserved(order_id="o1")])
    await store.append("o1", 2, [order_confirmed("o1")])
    published: list[tuple[str, int]] = []

    async def publish(doc: dict[str, Any]) -> None:
        published.append((doc["type"], doc["version"]))

    relay = OutboxRelay(store.events, publish)
    assert await relay.publish_pending() == 2
    assert await relay.publish_pending() == 0
    assert published == [("order.placed", 1), ("order.confirmed", 3)]  # internal events stay


async def test_an_event_whose_publish_failed_stays_pending(db: Any) -> None:
    store = EventStore(db)
    await store.append("o1", 0, [order_placed("o1")])

    async def broker_down(doc: dict[str, Any]) -> None:
        raise ConnectionError("broker unreachable")

    with contextlib.suppress(ConnectionError):
        await OutboxRelay(store.events, broker_down).publish_pending()
    assert await db["order_events"].count_documents({"outbox": "pending"}) == 1


def refused(doc: dict[str, Any]) -> Exception:
    """What the broker answers when an event cannot be routed (a subscriber's queue is gone)."""
    frame = Basic.Return(
        reply_code=312, reply_text="NO_ROUTE", exchange="shop.events", routing_key=doc["type"]
    )
    return DeliveryError(None, frame)


async def test_events_that_are_always_refused_are_parked_and_never_starve_new_ones(
    db: Any,
) -> None:
    """Reproduced on a running system: with 200 events stuck oldest-first, new orders' events
    were never swept, and POST kept answering 202."""
    store = EventStore(db)
    await store.create_indexes()
    for n in range(8):
        await store.append(f"stuck{n}", 0, [order_placed(f"stuck{n}")])
    for n in range(3):
        await store.append(f"new{n}", 0, [order_placed(f"new{n}")])
    published: list[str] = []

    async def publish(doc: dict[str, Any]) -> None:
        if doc["order_id"].startswith("stuck"):
            raise refused(doc)
        published.append(doc["order_id"])

    relay = OutboxRelay(store.events, publish, batch_size=5, max_attempts=3, max_backoff=0.0)
    for _ in range(6):
        await relay.publish_pending()
    assert sorted(published) == ["new0", "new1", "new2"]
    stats = await outbox_stats(store.events)
    assert (stats["pending"], stats["parked"]) == (0, 8)
    parked = await store.events.find_one({"order_id": "stuck0"})
    assert parked["outbox_attempts"] == 3 and "DeliveryError" in parked["outbox_error"]
    # Parked events wait for an operator: later sweeps leave them alone.
    await relay.publish_pending()
    assert sorted(published) == ["new0", "new1", "new2"]

    # Once the cause is fixed, `warren outbox retry` puts them back on the relay's path.
    retried = await retry_parked(store.events, keys=[parked["_id"]])
    assert retried == 1
    refused_until_fixed = relay.publish

    async def fixed(doc: dict[str, Any]) -> None:
        published.append(doc["order_id"])

    relay.publish = fixed
    assert await relay.publish_pending() == 1
    assert published[-1] == "stuck0"
    assert (await outbox_stats(store.events))["parked"] == 7
    assert refused_until_fixed is publish


async def test_a_refused_event_holds_back_only_its_own_orders_later_events(db: Any) -> None:
    store = EventStore(db)
    await store.append("o1", 0, [order_placed("o1")])
    await store.append("o1", 1, [order_confirmed("o1")])
    await store.append("o2", 0, [order_placed("o2")])
    published: list[tuple[str, str]] = []
    refuse = True

    async def publish(doc: dict[str, Any]) -> None:
        if refuse and doc["_id"] == "o1:000001":
            raise refused(doc)
        published.append((doc["order_id"], doc["type"]))

    relay = OutboxRelay(store.events, publish, max_attempts=5, max_backoff=0.0)
    await relay.publish_pending()
    assert published == [("o2", "order.placed")]  # o1's confirmation waits for its placement
    refuse = False
    await relay.publish_pending()
    assert published[1:] == [("o1", "order.placed"), ("o1", "order.confirmed")]


# --- notification ------------------------------------------------------------------------------


async def test_a_notification_is_recorded_once_per_event(db: Any) -> None:
    repo = NotificationRepository(db)
    note = {
        "_id": "event-1",
        "order_id": "o1",
        "event_type": "order.placed",
        "to": "a@b",
        "subject": "s",
        "body": "b",
    }
    first, recorded = await repo.record(note)
    await db["notifications"].update_one({"_id": "event-1"}, {"$set": {"state": "sent"}})
    second, recorded_again = await repo.record(note)
    assert first["state"] == "queued" and second["state"] == "sent"
    assert recorded and not recorded_again
    assert await db["notifications"].count_documents({}) == 1


async def test_an_orders_email_stream_only_moves_forward(db: Any) -> None:
    repo = NotificationRepository(db)
    assert await repo.order_stream("o1") == OrderStream()
    third = OrderStream(KeyState(last_applied=3, skipped=((2, 3),)), "event-3")
    await repo.advance("o1", third)
    await repo.advance("o1", OrderStream(KeyState(last_applied=1), "event-1"))  # a slow copy
    assert await repo.order_stream("o1") == third
    await repo.advance("o1", OrderStream(KeyState(4, skipped=((2, 3),)), "event-4"))
    assert (await repo.order_stream("o1")).last_event == "event-4"
    assert await repo.order_stream("o2") == OrderStream()


async def test_an_orders_email_stream_costs_one_write_per_event(db: Any) -> None:
    repo = NotificationRepository(db)
    repo.order_streams = counted = Recording(repo.order_streams)  # type: ignore[assignment]
    await repo.advance("o1", OrderStream(KeyState(last_applied=1), "event-1"))  # a new stream
    await repo.advance("o1", OrderStream(KeyState(last_applied=3), "event-3"))
    assert counted.calls["insert_one"] + counted.calls["update_one"] == 2
    assert await repo.order_stream("o1") == OrderStream(KeyState(last_applied=3), "event-3")


async def test_only_an_email_recorded_before_emails_were_ordered_counts_as_unordered(
    db: Any,
) -> None:
    repo = NotificationRepository(db)
    assert not await repo.has_unordered_emails("o1")
    # This version's first email of an order follows nothing: "after" is there, and null.
    await repo.record(
        {"_id": "event-1", "order_id": "o1", "event_type": "order.placed", "after": None}
    )
    assert not await repo.has_unordered_emails("o1")
    await repo.record({"_id": "event-9", "order_id": "o2", "event_type": "order.placed"})
    assert await repo.has_unordered_emails("o2")  # an older version's: no "after" at all


async def test_the_sweeper_finds_emails_whose_task_was_lost_and_leaves_busy_ones_alone(
    db: Any,
) -> None:
    clock = ManualClock()
    repo = NotificationRepository(db, clock)
    for n in ("lost", "retrying", "dead-worker", "sending"):
        await repo.record({"_id": n, "order_id": "o1", "event_type": "order.placed"})
    clock.time += 200  # longer than QUIET_SECONDS
    await repo.touched(["retrying"])  # a task gave its claim back just now (SMTP retry)
    await db["notifications"].update_one(
        {"_id": "dead-worker"}, {"$set": {"state": "sending", "claimed_at": clock.time - 90}}
    )
    await db["notifications"].update_one(
        {"_id": "sending"}, {"$set": {"state": "sending", "claimed_at": clock.time - 5}}
    )
    assert sorted(await repo.stuck(stale_claim_seconds=60)) == ["dead-worker", "lost"]
    await repo.touched(["lost"])
    assert await repo.stuck(stale_claim_seconds=60) == ["dead-worker"]


async def test_the_relay_publishes_woken_events_and_falls_back_to_sweeps_after_a_failure(
    db: Any,
) -> None:
    store = EventStore(db)
    first = await store.append("o1", 0, [order_placed("o1")])
    second = await store.append("o2", 0, [order_placed("o2")])
    published: list[str] = []
    broker_up = False

    async def publish(doc: dict[str, Any]) -> None:
        if not broker_up:
            raise ConnectionError("broker unreachable")
        published.append(doc["order_id"])

    relay = OutboxRelay(store.events, publish)
    relay.wake(first[:1])
    with pytest.raises(ConnectionError):
        await relay.publish_fresh()
    broker_up = True
    relay.wake(second[:1])
    assert await relay.publish_fresh() == 0  # degraded: only sweeps now, oldest first
    assert await relay.publish_pending() == 2
    assert published == ["o1", "o2"]
    assert await store.events.count_documents({"outbox": "pending"}) == 0
    # Saved while a sweep runs: both swept and handed over -- published once.
    third = await store.append("o3", 0, [order_placed("o3")])
    relay.wake(third[:1])
    assert await relay.publish_pending() == 1
    assert await relay.publish_fresh() == 0
    assert published == ["o1", "o2", "o3"]
    # Swept before it was handed over at all (the hand-over came after the sweep): once.
    fourth = await store.append("o4", 0, [order_placed("o4")])
    assert await relay.publish_pending() == 1
    relay.wake(fourth[:1])
    assert await relay.publish_fresh() == 0
    assert published == ["o1", "o2", "o3", "o4"]


async def test_the_relay_keeps_each_orders_events_in_order_and_marks_a_batch_at_once(
    db: Any,
) -> None:
    store = EventStore(db)
    docs = []
    for order_id in ("o1", "o2", "o3"):
        placed = await store.append(order_id, 0, [order_placed(order_id)])
        confirmed = await store.append(order_id, 1, [order_confirmed(order_id)])
        docs += [placed[0], confirmed[0]]
    published: list[tuple[str, str]] = []

    async def publish(doc: dict[str, Any]) -> None:
        await asyncio.sleep(0.01 if doc["order_id"] == "o2" else 0)  # o2 is slow
        if doc["order_id"] == "o3" and doc["type"] == "order.placed":
            raise ConnectionError("broker went away")
        published.append((doc["order_id"], doc["type"]))

    relay = OutboxRelay(store.events, publish)
    relay.wake(docs)
    with pytest.raises(ConnectionError):
        await relay.publish_fresh()
    for order_id in ("o1", "o2"):
        assert [t for o, t in published if o == order_id] == ["order.placed", "order.confirmed"]
    assert not [o for o, _ in published if o == "o3"]  # its first failed: its second waits
    pending = {doc["_id"] async for doc in store.events.find({"outbox": "pending"})}
    assert pending == {docs[4]["_id"], docs[5]["_id"]}


async def test_two_deliveries_of_one_order_deciding_at_once_never_hold_stock_twice(db: Any) -> None:
    repo = StockRepository(db)
    await repo.seed([MUGS, LAMPS])
    order = placed("o1", (MUGS, 2), (LAMPS, 3))

    results = await asyncio.gather(
        inventory.reserve_stock(order, order.payload(), InventoryDeps(repo)),  # type: ignore[arg-type]
        inventory.reserve_stock(order, order.payload(), InventoryDeps(repo)),  # type: ignore[arg-type]
        return_exceptions=True,
    )

    decided = [r for r in results if isinstance(r, list)]
    assert decided, results
    assert all(isinstance(r, list | inventory.DecisionInProgressError) for r in results)
    assert len({r[0].id for r in decided}) == 1  # one decision, one event id
    # The one that was told to wait re-announces the same decision when it is retried.
    again = await inventory.reserve_stock(order, order.payload(), InventoryDeps(repo))  # type: ignore[arg-type]
    assert again[0].id == decided[0][0].id
    assert await levels(repo) == {"BURROW-LAMP": (0, 3, 0), "CARROT-MUG": (8, 2, 0)}


async def test_events_stored_by_an_older_warren_are_given_their_envelope(db: Any) -> None:
    """An older Warren stored ``event_id``/``data``/``causation_id`` and no envelope: after an
    upgrade (a compose volume kept), they load, fold and publish like new ones."""
    store = EventStore(db)
    # Back then order.placed was v1, with the payment token in clear.
    placed_data = OrderPlacedV1(
        order_id="old",
        customer_id="bugs-bunny",
        lines=order_placed("old").lines,
        total_cents=1250,
        payment_token="tok_visa",
    ).model_dump(mode="json")
    occurred = datetime(2026, 11, 1, 12, 0, 0, 123000, tzinfo=UTC)
    await store.events.insert_one(
        {
            "_id": "old:000001",
            "event_id": "e-old-1",
            "order_id": "old",
            "version": 1,
            "type": "order.placed",
            "data": placed_data,
            "occurred_at": occurred,
            "causation_id": None,
            "trace_context": {},
            "outbox": "pending",
            "outbox_next_at": occurred,
        }
    )
    await store.create_indexes()
    published: list[Envelope] = []

    async def publish(doc: dict[str, Any]) -> None:
        published.append(Envelope.model_validate(doc["envelope"]))

    assert await OutboxRelay(store.events, publish).publish_pending() == 1
    [envelope] = published
    assert (envelope.id, envelope.type, envelope.version, envelope.sequence) == (
        "e-old-1",
        "order.placed",
        1,
        1,
    )
    assert envelope.data == placed_data
    assert Order.from_events("old", await store.load("old")).customer_id == "bugs-bunny"
    assert await store.upgrade_older_documents() == 0  # once
