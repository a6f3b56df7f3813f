"""Issue 12's "Done when": every attack of the threat model (docs/14-security.md), played in turn
against ONE running system while honest customers keep ordering -- each refused, by the API (a
status), by RabbitMQ (``ACCESS_REFUSED``, ``PRECONDITION_FAILED``) or by the consumer
(dead-lettered as forged) -- and then, once, the ledger: every genuine order final, nothing
lost, nothing done twice, nothing done for a forgery.

The attacks are a table, name -> coroutine (:data:`ATTACKS`), played in that order by one test
each. Before each attack an honest customer places an order and leaves it to run, so that every
attack meets orders in flight; honest customers order before the first attack and after the
last too. The last test, :func:`test_the_ledger_holds_after_every_attack`, waits for every
genuine order to end and runs the ledger (the checks of `warren ledger`), then counts the
effects itself: emails in the mail sink, charges at the gateway and stock, per order.

The broker attacks need a broker user per service (rabbitmqctl, as root); without them they
are skipped, as in tests/integration/test_broker_identity.py. What the attacks dead-letter is
removed at the end (their own message ids only), so that the tests after this module find the
dead-letter queues as they were.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import cycle
from typing import Any

import aio_pika
import httpx
import jwt
import pytest
from aio_pika.abc import AbstractChannel
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed
from pymongo import AsyncMongoClient

from cli.ledger import run_checks
from services.audit.repository import AuditTrail
from shared import auth, topology
from shared.contracts import (
    Envelope,
    EventData,
    OrderPlaced,
    PaymentSucceeded,
    PricedLine,
    StockRejected,
)
from shared.settings import WarrenSettings
from shared.testing.system import System, api_client, open_mongo, service_url
from tests.e2e.test_api_auth import forged_tokens
from tests.e2e.test_api_limits import TIGHT, forwarded
from tests.support.dlq import dead_letters
from tests.support.orders import (
    as_customer,
    as_operator,
    final_order,
    order_body,
    place,
    status_of,
    until_status,
)
from tests.support.polling import eventually
from tests.support.sealing import sealed_token

# The honest customers buy these, and no other test does: the stock counts at the end are theirs.
SKUS = ("BURROW-LAMP", "HAY-CUSHION", "EAR-MUFFS")
OUTSIDE = "victim@evil.example,x"  # a customer id that would mail an address outside the shop
SHOP_DOMAIN = "@customers.warren.example"  # notification's mail domain: every customer's


@dataclass
class Shop:
    """The running system under attack, and what the suite did to it."""

    system: System
    api: httpx.AsyncClient
    mongo: AsyncMongoClient
    # Every genuine order the suite placed -> the final status it must reach.
    expected: dict[str, str] = field(default_factory=dict)
    bought: dict[str, tuple[str, int]] = field(default_factory=dict)  # order -> (sku, quantity)
    # Order ids that only forgeries name: nothing may happen for them.
    forged_orders: set[str] = field(default_factory=set)
    # Forged messages that the consumers dead-lettered -> the queue whose DLQ holds them.
    dead_lettered: dict[str, topology.ConsumerQueue] = field(default_factory=dict)
    # What the DLQs held, and the stock, before the first attack.
    dlqs_before: dict[str, list[str]] = field(default_factory=dict)
    stock_before: dict[str, dict[str, Any]] = field(default_factory=dict)
    _skus: Iterator[str] = field(default_factory=lambda: cycle(SKUS))

    @property
    def operator_url(self) -> str:
        return self.system.env["RABBIT_URL"]

    def db(self, service: str) -> Any:
        return self.mongo[self.system.database(service)]

    def expect(self, order_id: str, token: str, sku: str, quantity: int) -> None:
        self.expected[order_id] = "CANCELLED" if token == "tok_chargeDeclined" else "CONFIRMED"
        self.bought[order_id] = (sku, quantity)

    async def honest_order(self, token: str = "tok_visa") -> str:
        """An honest customer places an order (signed in, a fresh Idempotency-Key) and goes on:
        the order runs while the attacks do."""
        sku, quantity = next(self._skus), len(self.expected) % 3 + 1
        customer = f"honest-{uuid.uuid4().hex[:8]}"
        order_id = await place(
            self.api, order_body(sku=sku, quantity=quantity, token=token), customer=customer
        )
        self.expect(order_id, token, sku, quantity)
        return order_id

    @property
    def last_order(self) -> str:
        return list(self.expected)[-1]

    async def remove_forgeries(self) -> dict[str, set[str]]:
        """Take the forgeries' dead letters out of their DLQs (nothing else); returns the ids
        removed per DLQ. Called by the last test, and again when the module ends."""
        removed = {}
        for queue in set(self.dead_lettered.values()):
            ids = {i for i, q in self.dead_lettered.items() if q == queue}
            removed[queue.dlq_name] = await remove_dead_letters(self.operator_url, queue, ids)
        self.dead_lettered.clear()
        return removed


# --- the broker, as a compromised service -------------------------------------------------------


@asynccontextmanager
async def channel_as(shop: Shop, user: str) -> AsyncIterator[AbstractChannel]:
    """A channel (with publisher confirms) on the system's broker, as ``user``."""
    url = service_url(shop.system, user).get("RABBIT_URL")
    if url is None:
        pytest.skip("no broker user per service here (rabbitmqctl, as root): nothing to attack")
    connection = await aio_pika.connect(url)
    async with connection:
        yield await connection.channel(publisher_confirms=True)


def forged(data: EventData, *, user_id: str) -> tuple[Envelope, Callable[[], aio_pika.Message]]:
    """An event in its envelope, and the AMQP message that carries it (a fresh one each call:
    one envelope, dropped into two queues)."""
    envelope = Envelope.wrap(data, source=topology.publisher_of(data.TYPE) or "?")
    return envelope, lambda: aio_pika.Message(
        envelope.model_dump_json().encode(),
        message_id=envelope.id,
        correlation_id=envelope.correlation_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        user_id=user_id,
    )


async def dead_letter(shop: Shop, queue: topology.ConsumerQueue, message_id: str) -> dict[str, Any]:
    """The headers of ``message_id``'s dead letter in ``queue``'s DLQ (left there); it is
    removed at the end of the suite."""
    shop.dead_lettered[message_id] = queue
    found = await eventually(
        lambda: dead_letters(shop.operator_url, queue),
        until=lambda letters: any(m.message_id == message_id for m in letters),
        timeout=20,
        what=f"{message_id} in {queue.dlq_name}",
    )
    [headers] = [dict(m.headers) for m in found if m.message_id == message_id]
    return headers


async def remove_dead_letters(
    rabbit_url: str, queue: topology.ConsumerQueue, ids: set[str]
) -> set[str]:
    """Take the messages with these ids out of ``queue``'s DLQ; returns the ids removed."""
    taken = await dead_letters(rabbit_url, queue, remove=frozenset(ids))
    return {str(m.message_id) for m in taken if m.message_id in ids}


async def dlq_contents(rabbit_url: str) -> dict[str, list[str]]:
    """Every DLQ's message ids, sorted (a DLQ browsed this way hands its messages back)."""
    return {
        queue.dlq_name: sorted(str(m.message_id) for m in await dead_letters(rabbit_url, queue))
        for queue in topology.ALL_QUEUES_WITH_DLQ
    }


# --- the attacks: the API ----------------------------------------------------------------------


async def no_token(shop: Shop) -> None:
    async with httpx.AsyncClient(base_url=shop.system.api, timeout=10.0) as anonymous:
        answers = [
            await anonymous.post(
                "/orders", json=order_body(), headers={"Idempotency-Key": str(uuid.uuid4())}
            ),
            await anonymous.get(f"/orders/{shop.last_order}"),
            await anonymous.get("/orders"),
        ]
    assert [a.status_code for a in answers] == [401, 401, 401]
    assert all(a.headers["WWW-Authenticate"].startswith("Bearer") for a in answers)


async def forged_expired_or_wrong_key_token(shop: Shop) -> None:
    for name, token in forged_tokens().items():  # another key, alg none, expired
        bearer = {"Authorization": f"Bearer {token}"}
        answers = [
            await shop.api.post("/orders", json=order_body(), headers=bearer),
            await shop.api.get(f"/orders/{shop.last_order}", headers=bearer),
        ]
        assert [a.status_code for a in answers] == [401, 401], name
        assert all(a.json()["detail"].startswith("invalid bearer token") for a in answers), name


async def someone_elses_order(shop: Shop) -> None:
    answers = {
        order_id: await shop.api.get(f"/orders/{order_id}", headers=as_customer("mallory"))
        for order_id in (shop.last_order, str(uuid.uuid4()))  # someone else's, and none
    }
    for order_id, answer in answers.items():  # the same answer: nothing says the order exists
        assert (answer.status_code, answer.json()) == (404, {"detail": f"no order {order_id}"})


async def another_customers_list(shop: Shop) -> None:
    victim = (await shop.api.get(f"/orders/{shop.last_order}", headers=as_operator())).json()
    listed = await shop.api.get(
        "/orders", params={"customer_id": victim["customer_id"]}, headers=as_customer("mallory")
    )
    assert listed.status_code == 403


async def customer_id_in_the_body(shop: Shop) -> None:
    victim = f"victim-{uuid.uuid4().hex[:6]}"
    refused = await shop.api.post(
        "/orders", json={**order_body(), "customer_id": victim}, headers=as_customer("mallory")
    )
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "customer_id"]
    nothing = await shop.api.get("/orders", params={"customer_id": victim}, headers=as_operator())
    assert nothing.json()["total"] == 0


async def a_2mb_body(shop: Shop) -> None:
    padded = json.dumps({**order_body(), "padding": "x" * 2 * 1024 * 1024})
    response = await shop.api.post(
        "/orders", content=padded, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "the request body is larger than 65536 bytes"}


async def a_body_that_is_not_json(shop: Shop) -> None:
    response = await shop.api.post(
        "/orders", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def a_recipient_in_the_customer_id(shop: Shop) -> None:
    """The customer is the token's subject: a token signed with the right key whose subject
    would add a recipient is refused, and an operator cannot list such a customer either."""
    now = datetime.now(UTC)
    claims = {"sub": OUTSIDE, "role": auth.CUSTOMER, "iss": auth.ISSUER}
    token = jwt.encode(
        {**claims, "iat": now, "exp": now + timedelta(hours=1)},
        auth.configured_secret().get_secret_value(),
        algorithm=auth.ALGORITHM,
    )
    placed = await shop.api.post(
        "/orders", json=order_body(), headers={"Authorization": f"Bearer {token}"}
    )
    assert placed.status_code == 401
    assert (
        placed.json()["detail"] == "invalid bearer token: the token's subject is not a customer id"
    )
    listed = await shop.api.get("/orders", params={"customer_id": OUTSIDE}, headers=as_operator())
    assert listed.status_code == 422


async def a_burst_over_the_rate_limits(shop: Shop) -> None:
    """The order service restarted with tight limits (tests/e2e/test_api_limits.py's), and
    back: per customer, then per address, whatever X-Forwarded-For says."""
    system, greedy = shop.system, f"greedy-{uuid.uuid4().hex[:8]}"
    system.restart("order", **TIGHT)
    try:
        sku = SKUS[0]
        posts = [
            await shop.api.post(
                "/orders",
                json=order_body(sku=sku),
                headers={**forwarded(), **as_customer(greedy)},
            )
            for _ in range(3)
        ]
        assert [p.status_code for p in posts] == [202, 202, 429]
        assert posts[2].headers["Retry-After"] == "60"
        for accepted in posts[:2]:  # within the quota: genuine orders, to the end
            shop.expect(accepted.json()["order_id"], "tok_visa", sku, 1)
        polls = [await shop.api.get("/orders/nope", headers=forwarded()) for _ in range(4)]
        assert [p.status_code for p in polls] == [404, 404, 404, 429]
        assert polls[3].headers["Retry-After"] == "10"
    finally:
        system.restart("order", **{name: system.env[name] for name in TIGHT})


# --- the attacks: the broker, as a compromised service -----------------------------------------


async def another_services_event_type(shop: Shop) -> None:
    """As payment: stock.rejected for an honest order in flight (inventory's event)."""
    _, message = forged(
        StockRejected(order_id=shop.last_order, reason="sold out"), user_id="payment"
    )
    async with channel_as(shop, "payment") as channel:
        events = await channel.get_exchange(topology.EVENTS.name, ensure=False)
        with pytest.raises(ChannelAccessRefused, match=r"stock\.rejected"):
            await events.publish(message(), routing_key="stock.rejected")


async def a_forged_user_id(shop: Shop) -> None:
    """As payment, claiming to be inventory (payment may publish payment.succeeded: the
    user_id is what RabbitMQ refuses)."""
    paid = PaymentSucceeded(order_id=shop.last_order, payment_id="ch_forged", amount_cents=1)
    _, message = forged(paid, user_id="inventory")
    async with channel_as(shop, "payment") as channel:
        events = await channel.get_exchange(topology.EVENTS.name, ensure=False)
        with pytest.raises(ChannelPreconditionFailed, match="user_id"):
            await events.publish(message(), routing_key="payment.succeeded")


async def reading_another_services_queue(shop: Shop) -> None:
    async with channel_as(shop, "payment") as channel:
        queue = await channel.get_queue(topology.ORDER_SAGA_REPLIES.name, ensure=False)
        with pytest.raises(ChannelAccessRefused):
            # Not acked: had it been handed over, it would go back when the channel closes.
            await queue.get(no_ack=False, fail=False)


async def purging_a_dlq(shop: Shop) -> None:
    async with channel_as(shop, "payment") as channel:
        dlq = await channel.get_queue(topology.INVENTORY_ORDER_PLACED.dlq_name, ensure=False)
        with pytest.raises(ChannelAccessRefused):
            await dlq.purge()


async def a_wrong_publisher_payment_for_a_pending_order(shop: Shop) -> None:
    """As notification (it may write to the default exchange, for Celery): payment.succeeded
    for a genuine order waiting for its payment -- a declined card, so that only the forgery
    could confirm it -- dropped straight into order.saga-replies, past the topic permissions,
    and into audit.events. The audit sees only its own queue (docs/14-security.md, "What the
    audit sees"): the copy for order is refused and dead-lettered, the audit's is recorded with
    its verdict. The payment replicas are stopped meanwhile, so the order is still pending."""
    system, payments = shop.system, ("payment_1", "payment_2")
    async with channel_as(shop, "notification") as channel:
        for name in payments:
            system.stop(name)
        try:
            order_id = await shop.honest_order(token="tok_chargeDeclined")
            await until_status(shop.api, order_id, {"RESERVED"})
            paid = PaymentSucceeded(order_id=order_id, payment_id="ch_forged", amount_cents=1)
            envelope, message = forged(paid, user_id="notification")
            for queue in (topology.ORDER_SAGA_REPLIES, topology.AUDIT_EVENTS):
                await channel.default_exchange.publish(message(), routing_key=queue.name)

            dead = await dead_letter(shop, topology.ORDER_SAGA_REPLIES, envelope.id)
            assert dead["x-warren-reason"] == (
                "poison: forged: payment.succeeded is published by payment, "
                "this one by notification"
            )
            assert await status_of(shop.api, order_id) == "RESERVED"  # not confirmed by it
            trail = await eventually(
                lambda: AuditTrail(shop.db("audit")).order_trail(order_id),
                until=lambda entries: any(e["event_id"] == envelope.id for e in entries),
                what="the forgery in the order's audit trail",
            )
            [entry] = [e for e in trail if e["event_id"] == envelope.id]
            assert (entry["publisher"], entry["routing_key"]) == ("notification", "audit.events")
            assert entry["verdict"] == (
                "forged: payment.succeeded is published by payment, this one by notification"
            )
        finally:
            for name in payments:
                system.start(name)


def outside_order(order_id: str) -> OrderPlaced:
    line = PricedLine(sku=SKUS[0], quantity=1, unit_price_cents=4500)
    return OrderPlaced(
        order_id=order_id,
        customer_id=OUTSIDE,
        lines=(line,),
        total_cents=4500,
        sealed_payment_token=sealed_token(order_id),
    )


async def outside_order_dead_lettered(shop: Shop, user: str) -> dict[str, Any]:
    """As ``user``, an order.placed naming an outside recipient, straight into notification's
    queue through the default exchange; the dead letter it became."""
    order_id = str(uuid.uuid4())
    shop.forged_orders.add(order_id)
    envelope, message = forged(outside_order(order_id), user_id=user)
    async with channel_as(shop, user) as channel:
        await channel.default_exchange.publish(
            message(), routing_key=topology.NOTIFICATION_ORDER_EVENTS.name
        )
    return await dead_letter(shop, topology.NOTIFICATION_ORDER_EVENTS, envelope.id)


async def a_forged_order_placed_for_an_outside_recipient(shop: Shop) -> None:
    """As inventory (it may write to the default exchange, for quote replies): an order.placed
    naming an outside recipient, straight into notification's queue. Refused as forged."""
    dead = await outside_order_dead_lettered(shop, "inventory")
    assert dead["x-warren-reason"] == (
        "poison: forged: order.placed is published by order, this one by inventory"
    )


async def an_outside_recipient_from_orders_own_user(shop: Shop) -> None:
    """As order itself (an order service that took the customer id unchecked, or a
    compromised one), the same order.placed, straight into notification's queue -- so that
    inventory reserves nothing for it. The publisher is right; the recipient is refused."""
    dead = await outside_order_dead_lettered(shop, "order")
    assert dead["x-warren-reason"] == (
        f"poison: customer id {OUTSIDE!r} cannot make an email address"
    )


Attack = Callable[[Shop], Awaitable[None]]

# --8<-- [start:attacks]
ATTACKS: dict[str, Attack] = {
    # the API: refused with a status
    "no-token": no_token,  # 401
    "forged-expired-or-wrong-key-token": forged_expired_or_wrong_key_token,  # 401
    "someone-elses-order": someone_elses_order,  # 404
    "another-customers-list": another_customers_list,  # 403
    "customer-id-in-the-body": customer_id_in_the_body,  # 422
    "a-2mb-body": a_2mb_body,  # 413
    "a-body-that-is-not-json": a_body_that_is_not_json,  # 400
    "a-recipient-in-the-customer-id": a_recipient_in_the_customer_id,  # 401, 422
    "a-burst-over-the-rate-limits": a_burst_over_the_rate_limits,  # 429 with Retry-After
    # the broker, as a compromised service: refused by RabbitMQ, or by the consumer
    "another-services-event-type": another_services_event_type,  # ACCESS_REFUSED
    "a-forged-user-id": a_forged_user_id,  # PRECONDITION_FAILED
    "reading-another-services-queue": reading_another_services_queue,  # ACCESS_REFUSED
    "purging-a-dlq": purging_a_dlq,  # ACCESS_REFUSED
    "a-wrong-publisher-payment": a_wrong_publisher_payment_for_a_pending_order,  # forged
    "a-forged-order-placed-for-outside": a_forged_order_placed_for_an_outside_recipient,  # forged
    "an-outside-recipient-from-order": an_outside_recipient_from_orders_own_user,  # no email
}
# --8<-- [end:attacks]


# --- the suite ---------------------------------------------------------------------------------


async def ledger_failures(shop: Shop) -> list[str]:
    """What `warren ledger` finds wrong, but the DLQs: those this suite checks itself, by id
    (a test before it may have left a dead letter of its own there)."""
    settings = WarrenSettings(
        rabbit_url=shop.operator_url,
        mongo_url=shop.system.env["MONGO_URL"],
        mongo_db_prefix=shop.system.env["MONGO_DB_PREFIX"],
    )
    checks = await run_checks(settings, maildir=shop.system.maildir, check_broker=False)
    return [f"{check.name}: {failure}" for check in checks for failure in check.failures]


@pytest.fixture(scope="module")
async def shop(system: System, mongo_url: str) -> AsyncIterator[Shop]:
    """The system once every order before this module has ended (the ledger holds), with the
    DLQs and the stock as they were then. Afterwards, the forgeries' dead letters go."""
    async with api_client(system, timeout=10.0) as api, open_mongo(mongo_url) as mongo:
        shop = Shop(system, api, mongo)
        await eventually(
            lambda: ledger_failures(shop),
            until=lambda failures: not failures,
            timeout=60,
            what="the ledger to hold before the first attack",
        )
        shop.dlqs_before = await dlq_contents(shop.operator_url)
        stock = shop.db("inventory")["stock"]
        shop.stock_before = {doc["_id"]: doc async for doc in stock.find({"_id": {"$in": SKUS}})}
        assert set(shop.stock_before) == set(SKUS)
        try:
            yield shop
        finally:
            await shop.remove_forgeries()  # if the last test did not get to it


async def test_honest_customers_order_before_the_attacks(shop: Shop) -> None:
    for token in ("tok_visa", "tok_visa", "tok_chargeDeclined"):
        await shop.honest_order(token)


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_the_attack_is_refused_while_orders_flow(shop: Shop, name: str) -> None:
    await shop.honest_order()
    await ATTACKS[name](shop)


async def test_the_ledger_holds_after_every_attack(shop: Shop) -> None:
    for token in ("tok_visa", "tok_chargeDeclined"):
        await shop.honest_order(token)
    system = shop.system

    # Every genuine order ends as its card says: no forgery decided one.
    for order_id, wanted in shop.expected.items():
        order = await final_order(shop.api, order_id, timeout=60)
        assert order["status"] == wanted, f"{order_id}: {order.get('cancel_reason')}"
    await eventually(
        lambda: [o for o in shop.expected if len(system.emails_for(o)) < 2],
        until=lambda missing: not missing,
        timeout=30,
        what="both emails of every genuine order",
    )

    # The ledger: nothing lost, nothing done twice, across the whole system.
    await eventually(
        lambda: ledger_failures(shop),
        until=lambda failures: not failures,
        timeout=30,  # every order is final by now: what is left is emails being marked sent
        what="the ledger to hold",
    )
    # The dead-letter queues: the forgeries, and nothing else new.
    forgeries: dict[str, set[str]] = {}
    for message_id, queue in shop.dead_lettered.items():
        forgeries.setdefault(queue.dlq_name, set()).add(message_id)
    assert await shop.remove_forgeries() == forgeries  # every one was there
    assert await dlq_contents(shop.operator_url) == shop.dlqs_before

    # The effects, counted where they happened, per genuine order and per forgery.
    emails = Counter(str(m["X-Warren-Order-Id"]) for m in system.emails())
    message_ids = Counter(str(m["Message-ID"]) for m in system.emails())
    charges: dict[str, list[str]] = {}
    async for charge in shop.db("payment")["gateway_charges"].find(
        {}, {"order_id": 1, "status": 1}
    ):
        charges.setdefault(charge["order_id"], []).append(charge["status"])
    reservations = {
        doc["_id"]: doc["state"] async for doc in shop.db("inventory")["reservations"].find({})
    }
    notified = Counter(
        [doc["order_id"] async for doc in shop.db("notification")["notifications"].find({})]
    )
    for order_id, wanted in shop.expected.items():
        assert emails[order_id] == 2, f"{order_id}: {emails[order_id]} emails"  # placed, final
        calls = [c for c in charges.get(order_id, []) if c != "replayed"]  # a replay moves nothing
        assert calls == (["captured"] if wanted == "CONFIRMED" else ["declined"]), order_id
        assert reservations[order_id] == ("committed" if wanted == "CONFIRMED" else "released")
    assert [m for m, n in message_ids.items() if n > 1] == []  # no email twice, anywhere
    for order_id in shop.forged_orders:
        assert (emails[order_id], notified[order_id]) == (0, 0), order_id
        assert order_id not in charges and order_id not in reservations, order_id
    outside = [m["X-RcptTo"] for m in system.emails() if SHOP_DOMAIN not in str(m["X-RcptTo"])]
    assert outside == []

    sold: Counter[str] = Counter()
    for order_id, (sku, quantity) in shop.bought.items():
        sold[sku] += quantity if shop.expected[order_id] == "CONFIRMED" else 0
    stock = shop.db("inventory")["stock"]
    for sku, before in shop.stock_before.items():
        after = await stock.find_one({"_id": sku})
        moved = (
            after["sold"] - before["sold"],
            after["available"] - before["available"],
            after["reserved"] - before["reserved"],
        )
        assert moved == (sold[sku], -sold[sku], 0), sku
