"""The saga in one process: the four services' real handlers on the in-memory bus, over
mongomock. Seconds, no broker, no processes -- and every effect counted: stock movements,
charges at the gateway, emails sent. (The real-broker tests prove what a bus in memory cannot:
dead-letter exchanges, TTLs, confirms, crashes.)"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, ClassVar

import pytest

from services.in_memory import InMemoryShop, open_shop
from services.inventory.catalog import CatalogItem
from shared import contracts, topology
from shared.contracts import Envelope, OrderConfirmed, PaymentFailed
from shared.settings import RETRY_DELAYS_SECONDS
from shared.testing.memory_mongo import AsyncMongomockDatabase

CATALOG = [
    CatalogItem("RABBIT-PLUSH", "Plush rabbit", 1999, 100),
    CatalogItem("CARROT-MUG", "Carrot mug", 1250, 100),
    CatalogItem("LAST-ONE", "The last one", 500, 1),
]


@pytest.fixture
async def shop() -> InMemoryShop:
    databases: dict[str, AsyncMongomockDatabase] = {}

    def database(service: str) -> AsyncMongomockDatabase:
        return databases.setdefault(service, AsyncMongomockDatabase(f"warren_{service}"))

    return await open_shop(database, catalog=CATALOG)


async def status(shop: InMemoryShop, order_id: str) -> tuple[str, str | None]:
    view = await shop.order.views.get(order_id)
    assert view is not None
    return view["status"], view["cancel_reason"]


async def stock(shop: InMemoryShop, sku: str) -> dict[str, int]:
    doc = await shop.inventory.stock.stock.find_one({"_id": sku})
    assert doc is not None
    return {key: doc[key] for key in ("available", "reserved", "sold")}


async def captured(shop: InMemoryShop) -> Counter[str]:
    """Charges that moved money, per order (a refund keeps its charge: refunded)."""
    charges = shop.payment.gateway.charges.find({"status": {"$in": ["captured", "refunded"]}})
    return Counter([doc["order_id"] async for doc in charges])


async def emails_per_order(shop: InMemoryShop) -> Counter[str]:
    sent: Counter[str] = Counter()
    async for note in shop.notification.notifications.notifications.find({}):
        sent[note["order_id"]] += shop.emails[note["_id"]]
    return sent


def published(shop: InMemoryShop, event_type: str) -> list[Envelope]:
    return [envelope for envelope in shop.bus.published if envelope.type == event_type]


async def test_a_paid_order_is_confirmed_once(shop: InMemoryShop) -> None:
    order_id = await shop.place("RABBIT-PLUSH", 2)
    await shop.bus.drain()

    assert await status(shop, order_id) == ("CONFIRMED", None)
    assert await stock(shop, "RABBIT-PLUSH") == {"available": 98, "reserved": 0, "sold": 2}
    assert await captured(shop) == {order_id: 1}
    assert await emails_per_order(shop) == {order_id: 2}  # placed, confirmed
    assert shop.bus.dead_letters == []


async def test_a_declined_card_cancels_the_order_and_releases_its_stock(
    shop: InMemoryShop,
) -> None:
    order_id = await shop.place("CARROT-MUG", 3, token="tok_chargeDeclined")
    await shop.bus.drain()

    state, reason = await status(shop, order_id)
    assert state == "CANCELLED" and reason is not None and "declined" in reason
    assert await stock(shop, "CARROT-MUG") == {"available": 100, "reserved": 0, "sold": 0}
    assert len(published(shop, "stock.released")) == 1
    assert await captured(shop) == {}
    assert await emails_per_order(shop) == {order_id: 2}  # placed, cancelled


async def test_out_of_stock_cancels_without_a_charge(shop: InMemoryShop) -> None:
    # Two orders for the last one: whichever inventory decides first gets it.
    orders = [await shop.place("LAST-ONE"), await shop.place("LAST-ONE")]
    await shop.bus.drain()

    outcomes = {order_id: await status(shop, order_id) for order_id in orders}
    [winner] = [order_id for order_id, (state, _) in outcomes.items() if state == "CONFIRMED"]
    [(state, reason)] = [outcome for order_id, outcome in outcomes.items() if order_id != winner]
    assert state == "CANCELLED" and reason is not None and "stock rejected" in reason
    assert await stock(shop, "LAST-ONE") == {"available": 0, "reserved": 0, "sold": 1}
    assert await captured(shop) == {winner: 1}


async def place_a_mix(shop: InMemoryShop) -> tuple[dict[str, str], list[str]]:
    """Six orders: paid, declined, and two for the last one in stock. Returns the expected
    final status of the first four, and the two that compete for the last one."""
    expected = {}
    for token in ("tok_visa", "tok_chargeDeclined", "tok_visa", "tok_insufficientFunds"):
        order_id = await shop.place("RABBIT-PLUSH", token=token)
        expected[order_id] = "CONFIRMED" if token == "tok_visa" else "CANCELLED"
    return expected, [await shop.place("LAST-ONE"), await shop.place("LAST-ONE")]


async def assert_every_effect_once(
    shop: InMemoryShop, expected: dict[str, str], competing: list[str]
) -> None:
    finals = {order_id: (await status(shop, order_id))[0] for order_id in competing}
    assert sorted(finals.values()) == ["CANCELLED", "CONFIRMED"]
    expected = expected | finals
    for order_id, final in expected.items():
        assert (await status(shop, order_id))[0] == final, order_id
    confirmed = {order_id for order_id, final in expected.items() if final == "CONFIRMED"}
    assert await captured(shop) == dict.fromkeys(confirmed, 1)
    assert await emails_per_order(shop) == dict.fromkeys(expected, 2)
    assert await stock(shop, "RABBIT-PLUSH") == {"available": 98, "reserved": 0, "sold": 2}
    assert await stock(shop, "LAST-ONE") == {"available": 0, "reserved": 0, "sold": 1}
    assert shop.bus.dead_letters == []


async def test_every_message_delivered_twice_changes_nothing(shop: InMemoryShop) -> None:
    expected, competing = await place_a_mix(shop)
    await shop.bus.drain(twice=True)
    await assert_every_effect_once(shop, expected, competing)


@pytest.mark.parametrize("seed", range(5))
async def test_any_delivery_order_ends_the_same(shop: InMemoryShop, seed: int) -> None:
    expected, competing = await place_a_mix(shop)
    await shop.bus.drain(shuffle=random.Random(seed), twice=seed % 2 == 1)
    await assert_every_effect_once(shop, expected, competing)
    # What waited for an earlier step got through within the retries RabbitMQ would give it.
    assert shop.bus.most_attempts <= len(RETRY_DELAYS_SECONDS) + 1


async def test_a_stale_copy_of_order_placed_holds_no_stock_and_charges_nothing(
    shop: InMemoryShop,
) -> None:
    order_id = await shop.place("RABBIT-PLUSH")
    await shop.bus.drain()
    [placed] = published(shop, "order.placed")
    [reserved] = published(shop, "stock.reserved")

    # A copy of order.placed that was stuck somewhere (a slow replica, a DLQ replay) arrives
    # after the saga ended: inventory re-announces its decision, with the same event id.
    shop.bus.send(topology.INVENTORY_ORDER_PLACED, placed.model_dump_json().encode())
    await shop.bus.drain()

    assert [event.id for event in published(shop, "stock.reserved")] == [reserved.id] * 2
    assert await status(shop, order_id) == ("CONFIRMED", None)
    assert await stock(shop, "RABBIT-PLUSH") == {"available": 99, "reserved": 0, "sold": 1}
    assert await captured(shop) == {order_id: 1}
    assert await emails_per_order(shop) == {order_id: 2}


async def test_an_event_a_queue_has_no_handler_for_is_poison(shop: InMemoryShop) -> None:
    order_id = await shop.place("RABBIT-PLUSH")
    stray = Envelope.wrap(PaymentFailed(order_id=order_id, reason="x"), source="test")
    shop.bus.send(topology.PAYMENT_STOCK_RESERVED, stray.model_dump_json().encode())
    await shop.bus.drain()

    [dead] = shop.bus.dead_letters
    assert dead.queue == "payment.stock-reserved"
    assert "no handler for payment.failed v1 in payment.stock-reserved" in dead.reason
    assert await status(shop, order_id) == ("CONFIRMED", None)  # the queue kept going


class OrderConfirmedV2(OrderConfirmed):
    """A next version of order.confirmed, as a rolling deploy would introduce it."""

    VERSION: ClassVar[int] = 2
    loyalty_points: int = 0


async def test_an_event_keeps_its_version_through_the_outbox(
    shop: InMemoryShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(contracts.EVENT_TYPES, ("order.confirmed", 2), OrderConfirmedV2)
    order_id = await shop.place("RABBIT-PLUSH")
    await shop.bus.drain()
    events = await shop.order.store.load(order_id)
    v2 = OrderConfirmedV2(
        order_id=order_id, customer_id="bugs-bunny", total_cents=1, loyalty_points=7
    )
    stored = await shop.order.store.append(order_id, len(events), [v2])
    shop.order.wake_relay(stored)
    await shop.bus.drain()

    assert stored[0]["envelope"]["version"] == 2
    last = shop.bus.published[-1]
    assert (last.type, last.version, last.data["loyalty_points"]) == ("order.confirmed", 2, 7)
    stored_after: dict[str, Any] | None = await shop.order.store.events.find_one(
        {"_id": stored[0]["_id"]}
    )
    assert stored_after is not None and stored_after["outbox"] == "published"
    # Notification's table knows order.confirmed v1 only, and so does the audit's: the v2
    # copy is poison there, not handled as a v1.
    dead = {letter.queue: letter.reason for letter in shop.bus.dead_letters}
    assert set(dead) == {"notification.order-events", "audit.events"}
    for queue, reason in dead.items():
        assert f"no handler for order.confirmed v2 in {queue}" in reason
    # And the order reads its own stream, v2 included.
    assert [event.data.VERSION for event in await shop.order.store.load(order_id)][-1] == 2
