"""No payment token and no customer address where they do not belong, after a real run.

Orders go through the whole system -- paid, declined, refused at the door -- and two messages
are dead-lettered: one a buggy producer sent with the clear token and an address in it, one a
genuine sealed event delivered to a queue that has no handler for it. Then everything the run
left behind is searched for the clear tokens and for customer addresses: every log file, every
span, every DLQ message (headers; bodies too, but the buggy producer's own), and every document
the four services and the audit stored.

Where a customer address may be: the ``to`` of notification's ``notifications`` documents (the
service sends the email, it must know where), the emails, and the mail sink. Nowhere else.
Where a clear token may be: nowhere once the API has sealed it -- not even in the order service.
A dead-letter queue keeps a message as it arrived (that is its job: replay needs the original);
what Warren must not do is copy a payload into a reason header or a log line.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from cli import dlq
from shared import topology
from shared.contracts import Envelope, OrderPlacedV1, PricedLine
from shared.testing.system import System, publish_raw
from tests.support.orders import final_order, order_body, place
from tests.support.polling import eventually

TOKENS = ("tok_visa", "tok_chargeDeclined")
# The first bytes of every bearer token the API is sent (a JWT's header, {"alg":"HS256",...}):
# a log line or a span that kept the Authorization header would hold them.
BEARER_TOKEN = "eyJhbGciOiJIUzI1NiIs"
ADDRESS = "@customers.warren.example"  # every customer's address (notification's mail domain)
# The only stored field that may hold an address: (service, collection, field).
ADDRESS_FIELDS = {("notification", "notifications", "to")}
SERVICES = ("order", "inventory", "payment", "notification", "audit")


def leaks(text: str, *, address: bool = True) -> list[str]:
    """The sensitive strings found in ``text``."""
    return [s for s in (*TOKENS, BEARER_TOKEN, *((ADDRESS,) if address else ())) if s in text]


def dumped(value: Any) -> str:
    return json.dumps(value, default=str)


@pytest.fixture
def dlq_tool(rabbit_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DLQ tool (cli/dlq.py) reads RABBIT_URL like every Warren command."""
    monkeypatch.setenv("RABBIT_URL", rabbit_url)


async def run_orders(system: System, api: httpx.AsyncClient) -> list[str]:
    """A paid order and a declined one, to the end (both emails sent); and a refused one."""
    placed = {
        await place(api, order_body(sku="CARROT-MUG", token=token), customer=f"leak-{n}"): want
        for n, (token, want) in enumerate((("tok_visa", "CONFIRMED"), (TOKENS[1], "CANCELLED")))
    }
    for order_id, want in placed.items():
        assert (await final_order(api, order_id))["status"] == want, system.logs("payment")
        await eventually(lambda o=order_id: len(system.emails_for(o)), until=lambda n: n == 2)
    refused = await api.post("/orders", json=order_body(sku="NO-SUCH-SKU", token="tok_visa"))
    assert refused.status_code >= 400
    return list(placed)


async def dead_letter_two(
    system: System, mongo: AsyncMongoClient, rabbit_url: str, paid: str
) -> tuple[str, str]:
    """A buggy producer's order.placed (clear token, an address) and a genuine, sealed
    stock.reserved delivered where nobody handles it: both end in DLQs. Returns their ids."""
    buggy = Envelope(
        type="order.placed",
        version=2,
        source="order",
        correlation_id=str(uuid.uuid4()),
        data={
            "order_id": "buggy",
            "customer_id": f"bugs{ADDRESS}",
            "lines": [],
            "total_cents": 1,
            "sealed_payment_token": "tok_visa",  # the clear token where a sealed one goes
        },
    )
    await publish_raw(
        rabbit_url,
        topology.EVENTS.name,
        "order.placed",
        buggy.model_dump_json().encode(),
        message_id=buggy.id,
        publisher="order",  # not a forgery: the order service, with a bug
    )
    reservation = await mongo[system.database("inventory")]["reservations"].find_one({"_id": paid})
    assert reservation is not None
    genuine = reservation["outcome_event"]  # the stock.reserved inventory published
    assert genuine["type"] == "stock.reserved" and "sealed_payment_token" in genuine["data"]
    await publish_raw(
        rabbit_url,
        "",  # straight into notification's queue, which has no handler for stock.reserved
        topology.NOTIFICATION_ORDER_EVENTS.name,
        json.dumps(genuine).encode(),
        message_id=genuine["id"],
        correlation_id=paid,
        publisher="inventory",
    )
    return buggy.id, genuine["id"]


async def dead_letters() -> list[dict[str, Any]]:
    every = []
    for queue in topology.ALL_QUEUES_WITH_DLQ:
        every += await dlq.show_messages(queue.name, 200)
    return every


async def stored_documents(
    system: System, mongo: AsyncMongoClient
) -> Iterable[tuple[str, str, dict[str, Any]]]:
    found = []
    for service in SERVICES:
        db = mongo[system.database(service)]
        for collection in await db.list_collection_names():
            found += [(service, collection, doc) async for doc in db[collection].find()]
    return found


# --8<-- [start:sensitive-data-test]
async def test_no_token_or_address_in_logs_spans_dead_letters_or_stored_documents(
    system: System,
    api: httpx.AsyncClient,
    mongo: AsyncMongoClient,
    rabbit_url: str,
    dlq_tool: None,
) -> None:
    paid, declined = await run_orders(system, api)
    buggy, genuine = await dead_letter_two(system, mongo, rabbit_url, paid)
    dead = await eventually(
        dead_letters,
        until=lambda ms: {buggy, genuine} <= {m["message_id"] for m in ms},
        what="both messages in the DLQs",
    )
    # Every span of both orders, down to the last email's task, is in the spans file.
    await eventually(
        lambda: [
            s["attributes"].get("order.id")
            for s in system.spans()
            if s["name"] == "run/notification.send_email"
        ],
        until=lambda tagged: tagged.count(paid) == 2 and tagged.count(declined) == 2,
        what="the spans of every email task",
    )

    found: dict[str, list[str]] = {}
    for log in sorted(system.log_dir.glob("*.log")):
        if hits := leaks(log.read_text(errors="replace")):
            found[f"log {log.name}"] = hits
    for span in system.spans():
        if hits := leaks(dumped(span)):
            found[f"span {span['service']} {span['name']!r}"] = hits
    for message in dead:
        where = f"DLQ {message['headers'].get('x-warren-original-queue')} {message['message_id']}"
        if hits := leaks(dumped({k: v for k, v in message.items() if k != "body"})):
            found[f"{where} headers"] = hits
        if message["message_id"] != buggy and (hits := leaks(message["body"])):
            found[f"{where} body"] = hits
    for service, collection, doc in await stored_documents(system, mongo):
        allowed = {f for s, c, f in ADDRESS_FIELDS if (s, c) == (service, collection)}
        shown = {k: v for k, v in doc.items() if k not in allowed}
        if hits := leaks(dumped(shown)):
            found[f"{service}.{collection} {doc['_id']}"] = hits
    assert not found, "sensitive data where it does not belong:\n" + "\n".join(
        f"  {where}: {hits}" for where, hits in found.items()
    )
    # The one place an address belongs: the notification, to send the email.
    notification = mongo[system.database("notification")]["notifications"]
    assert (await notification.find_one({"order_id": paid}))["to"].endswith(ADDRESS)
    await dlq.purge_queue(topology.INVENTORY_ORDER_PLACED.name)
    await dlq.purge_queue(topology.NOTIFICATION_ORDER_EVENTS.name)
    await dlq.purge_queue(topology.AUDIT_EVENTS.name)  # the audit refused the buggy one too
    # --8<-- [end:sensitive-data-test]


async def test_an_order_placed_v1_left_in_a_queue_at_the_upgrade_is_dead_lettered(
    system: System, rabbit_url: str, dlq_tool: None
) -> None:
    """v1 carried the token in clear: the upgraded consumers do not read it (they know v2
    only), they dead-letter it with the reason; its order is cancelled by the saga deadline.
    Hence the upgrade procedure: drain first (docs/14-security.md)."""
    v1 = Envelope.wrap(
        OrderPlacedV1(
            order_id=str(uuid.uuid4()),
            customer_id="before-the-upgrade",
            lines=(PricedLine(sku="CARROT-MUG", quantity=1, unit_price_cents=1250),),
            total_cents=1250,
            payment_token="tok_visa",
        ),
        source="order",
    )
    await publish_raw(
        rabbit_url,
        topology.EVENTS.name,
        v1.type,
        v1.model_dump_json().encode(),
        message_id=v1.id,
        publisher="order",
    )
    queues = (topology.INVENTORY_ORDER_PLACED, topology.NOTIFICATION_ORDER_EVENTS)
    for queue in (*queues, topology.AUDIT_EVENTS):  # the audit knows v2 only, too
        shown = await eventually(
            lambda q=queue.name: dlq.show_messages(q, 200),
            until=lambda ms: any(m["message_id"] == v1.id for m in ms),
            what=f"the v1 order.placed in {queue.dlq_name}",
        )
        [dead] = [m for m in shown if m["message_id"] == v1.id]
        assert "no contract for event 'order.placed' version 1" in dead["reason"]
        assert not leaks(dumped(dead["headers"]))  # the body has it; the reason does not
        assert await dlq.purge_queue(queue.name) >= 1  # it holds a clear token: do not keep it
