"""The email recipient: one address, made by notification from a customer id that matches the
API's own pattern -- or none at all, and the event is dead-lettered with the reason."""

from __future__ import annotations

import pytest

from services.in_memory import InMemoryShop, open_shop
from services.inventory.catalog import CatalogItem
from services.notification.recipients import UnaddressableError, customer_address
from shared import topology
from shared.contracts import Envelope, OrderConfirmed
from shared.testing.memory_mongo import AsyncMongomockDatabase

DOMAIN = "customers.warren.example"


def test_a_customer_id_makes_one_address_at_the_shop_domain() -> None:
    assert customer_address("bugs-bunny", DOMAIN) == "bugs-bunny@customers.warren.example"
    assert customer_address("B.Bunny_42", DOMAIN) == "B.Bunny_42@customers.warren.example"


@pytest.mark.parametrize(
    "customer_id",
    [
        "victim@evil.example,x",  # a second recipient, outside
        "victim@evil.example",
        "x, victim@evil.example",
        "bugs\r\nBcc: victim@evil.example",  # a header of its own
        "bugs\n",
        "<victim@evil.example>",
        '"victim@evil.example" bugs',
        "bugs bunny",
        "-bugs",  # the API's pattern: a letter or a digit first
        "",
        "b" * 65,  # the API's length
        "bügs",
    ],
)
def test_a_customer_id_outside_the_api_pattern_makes_no_address(customer_id: str) -> None:
    with pytest.raises(UnaddressableError, match="cannot make an email address"):
        customer_address(customer_id, DOMAIN)


@pytest.fixture
async def shop() -> InMemoryShop:
    databases: dict[str, AsyncMongomockDatabase] = {}

    def database(service: str) -> AsyncMongomockDatabase:
        return databases.setdefault(service, AsyncMongomockDatabase(f"mail_{service}"))

    return await open_shop(database, catalog=[CatalogItem("RABBIT-PLUSH", "Plush", 1999, 10)])


async def test_an_event_for_an_unaddressable_customer_is_dead_lettered_at_once_unsent(
    shop: InMemoryShop,
) -> None:
    forged = Envelope.wrap(
        OrderConfirmed(order_id="o-1", customer_id="victim@evil.example,x", total_cents=1),
        source="order",
    )
    shop.bus.send(topology.NOTIFICATION_ORDER_EVENTS, forged.model_dump_json().encode())
    await shop.bus.drain()

    [dead] = shop.bus.dead_letters
    assert dead.queue == topology.NOTIFICATION_ORDER_EVENTS.name
    assert dead.reason.startswith("poison: ")
    assert "customer id 'victim@evil.example,x' cannot make an email address" in dead.reason
    assert shop.bus.most_attempts == 1  # not retried: no retry can make it an address
    assert await shop.notification.notifications.notifications.count_documents({}) == 0
    assert sum(shop.emails.values()) == 0


async def test_a_good_customer_is_still_emailed(shop: InMemoryShop) -> None:
    order_id = await shop.place("RABBIT-PLUSH", customer="bugs-bunny")
    await shop.bus.drain()
    notes = shop.notification.notifications.notifications.find({"order_id": order_id})
    assert {note["to"] async for note in notes} == {"bugs-bunny@customers.warren.example"}
    assert shop.bus.dead_letters == []
