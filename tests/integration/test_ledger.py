"""The ledger sees every kind of loss and duplicate, counted where it happened.

Each test writes the aftermath of one failure into fresh databases (and a Maildir), as the
services would have left it, and checks that ``warren ledger`` names it.
"""

from __future__ import annotations

import mailbox
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from cli.ledger import run_checks
from shared.settings import WarrenSettings

NOW = datetime.now(UTC) - timedelta(minutes=5)


class Shop:
    """One confirmed order for 2 mugs, with everything the services record for it."""

    def __init__(
        self, client: AsyncMongoClient, mongo_url: str, prefix: str, maildir: Path
    ) -> None:
        services = ("order", "inventory", "payment", "notification")
        self.db = {service: client[f"{prefix}_{service}"] for service in services}
        self.maildir = maildir
        self.settings = WarrenSettings(mongo_url=mongo_url, mongo_db_prefix=prefix)
        self.mails = mailbox.Maildir(maildir, create=True)

    async def event(self, order_id: str, version: int, type_: str, **extra: Any) -> str:
        event_id = str(uuid.uuid4())
        await self.db["order"]["order_events"].insert_one(
            {
                "_id": f"{order_id}:{version:06d}",
                "order_id": order_id,
                "version": version,
                "type": type_,
                "envelope": {  # as the order service stores it (the fields the ledger reads)
                    "id": event_id,
                    "type": type_,
                    "data": {"lines": [{"sku": "MUG", "quantity": 2, "unit_price_cents": 100}]},
                },
                "occurred_at": NOW,
                "outbox": "published",
                **extra,
            }
        )
        await self.db["notification"]["notifications"].insert_one(
            {"_id": event_id, "order_id": order_id, "event_type": type_, "state": "sent"}
        )
        self.email(event_id)
        return event_id

    def email(self, event_id: str) -> None:
        message = EmailMessage()
        message["Message-ID"] = f"<{event_id}@warren>"
        message.set_content("hello")
        self.mails.add(message)

    async def confirmed_order(self, order_id: str = "o1") -> None:
        await self.event(order_id, 1, "order.placed", saga="closed")
        await self.event(order_id, 2, "order.confirmed")
        await self.db["order"]["orders"].insert_one({"_id": order_id, "status": "CONFIRMED"})
        await self.db["inventory"]["reservations"].insert_one(
            {"_id": order_id, "state": "committed"}
        )
        await self.db["payment"]["gateway_charges"].insert_one(
            {"_id": order_id, "order_id": order_id, "status": "captured", "amount_cents": 200}
        )

    async def failures(self) -> list[str]:
        checks = await run_checks(self.settings, maildir=self.maildir, check_broker=False)
        return [failure for check in checks for failure in check.failures]


@pytest.fixture
async def shop(mongo_client: AsyncMongoClient, mongo_url: str, tmp_path: Path, run_id: str) -> Shop:
    prefix = f"ledger{run_id}{uuid.uuid4().hex[:6]}"
    shop = Shop(mongo_client, mongo_url, prefix, tmp_path / "mail")
    await shop.db["inventory"]["stock"].insert_one(
        {"_id": "MUG", "initial": 10, "available": 8, "reserved": 0, "sold": 2, "holds": {}}
    )
    await shop.confirmed_order()
    return shop


async def test_a_consistent_shop_passes(shop: Shop) -> None:
    assert await shop.failures() == []


async def test_a_second_charge_that_moved_money_is_seen(shop: Shop) -> None:
    await shop.db["payment"]["gateway_charges"].insert_one(
        {"_id": "another-key", "order_id": "o1", "status": "captured", "amount_cents": 200}
    )
    assert "order o1 was charged 2 times" in await shop.failures()


async def test_a_replayed_charge_that_moved_no_money_is_fine(shop: Shop) -> None:
    await shop.db["payment"]["gateway_charges"].insert_one(
        {"_id": "o1:replay:1", "order_id": "o1", "status": "replayed"}
    )
    assert await shop.failures() == []


async def test_an_email_sent_twice_is_seen_in_the_sink(shop: Shop) -> None:
    placed = await shop.db["order"]["order_events"].find_one({"_id": "o1:000001"})
    shop.email(placed["envelope"]["id"])  # the same Message-ID once more
    assert "2 emails in the mail sink for order.placed of o1" in await shop.failures()


async def test_an_email_that_never_arrived_is_seen_though_its_notification_says_sent(
    shop: Shop,
) -> None:
    await shop.event("o2", 1, "order.placed", saga="closed")
    await shop.event("o2", 2, "order.cancelled")
    await shop.db["order"]["orders"].insert_one({"_id": "o2", "status": "CANCELLED"})
    await shop.db["inventory"]["reservations"].insert_one({"_id": "o2", "state": "released"})
    assert await shop.failures() == []
    confirmed = await shop.db["order"]["order_events"].find_one({"_id": "o2:000002"})
    for key in list(shop.mails.keys()):
        if shop.mails[key]["Message-ID"] == f"<{confirmed['envelope']['id']}@warren>":
            shop.mails.remove(key)
    assert "0 emails in the mail sink for order.cancelled of o2" in await shop.failures()


async def test_an_order_with_no_notification_for_its_event_is_seen(shop: Shop) -> None:
    await shop.db["notification"]["notifications"].delete_many({"event_type": "order.confirmed"})
    assert "no notification for order.confirmed of o1" in await shop.failures()


async def test_stock_sold_beyond_what_confirmed_orders_bought_is_seen(shop: Shop) -> None:
    await shop.db["inventory"]["stock"].update_one(
        {"_id": "MUG"}, {"$inc": {"available": -1, "sold": 1}}
    )
    assert "MUG: sold 3 != 2 bought by confirmed orders" in await shop.failures()


async def test_a_parked_outbox_event_and_an_order_past_its_deadline_are_seen(shop: Shop) -> None:
    await shop.db["order"]["order_events"].insert_one(
        {
            "_id": "o3:000001",
            "order_id": "o3",
            "version": 1,
            "type": "order.placed",
            "envelope": {"id": "e3", "type": "order.placed", "data": {"lines": []}},
            "occurred_at": NOW,
            "outbox": "parked",
            "saga": "open",
            "saga_deadline": NOW,
        }
    )
    await shop.db["order"]["orders"].insert_one({"_id": "o3", "status": "PENDING"})
    failures = await shop.failures()
    assert "order.placed o3:000001 is parked (warren outbox list)" in failures
    assert "order o3 is past its saga deadline" in failures
    assert "order o3 is PENDING" in failures


async def test_a_cancelled_order_whose_charge_was_refunded_is_fine_and_one_kept_is_not(
    shop: Shop,
) -> None:
    await shop.db["order"]["orders"].update_one({"_id": "o1"}, {"$set": {"status": "CANCELLED"}})
    await shop.db["inventory"]["reservations"].update_one(
        {"_id": "o1"}, {"$set": {"state": "returned"}}
    )
    await shop.db["inventory"]["stock"].update_one(
        {"_id": "MUG"}, {"$set": {"available": 10, "sold": 0}}
    )
    assert "cancelled order o1 was charged and not refunded" in await shop.failures()
    await shop.db["payment"]["gateway_charges"].update_one(
        {"_id": "o1"}, {"$set": {"status": "refunded"}}
    )
    assert await shop.failures() == []
