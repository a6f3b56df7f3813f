"""Nothing lost, nothing done twice: the system under duplicates, shuffles, poison, a database
outage, processes killed mid-message, and a broker restart with orders in flight.

These tests get a system of their own (its own MongoDB stand-in, which they stop and start,
and a short retry backoff of 1 s, 2 s, 4 s, and a 5 s inventory lease to match) so the faults never reach the other end-to-end tests.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from pymongo import AsyncMongoClient

from cli import dlq
from cli.ledger import run_checks
from shared import topology
from shared.rpc import RpcClient
from shared.settings import WarrenSettings
from shared.testing.system import (
    System,
    api_client,
    mongo_standin,
    mongo_url_of,
    open_mongo,
    publish_raw,
    rabbitmqctl_command,
    running_system,
)
from tests.support.orders import (
    FINAL,
    as_customer,
    final_order,
    order_body,
    place,
    status_of,
    until_status,
)
from tests.support.polling import eventually


@pytest.fixture(scope="module")
async def faulty(
    rabbit_url: str, tmp_path_factory: pytest.TempPathFactory, run_id: str
) -> AsyncIterator[System]:
    run_dir = tmp_path_factory.mktemp("faults")
    database = mongo_standin(run_dir / "mongo")
    database.start()
    async with running_system(
        rabbit_url,
        mongo_url_of(database),
        run_dir,
        f"faults{run_id}",
        extra_env={"RETRY_DELAYS_SECONDS": "[1, 2, 4]", "DECISION_LEASE_SECONDS": "5"},
        database=database,
    ) as system:
        yield system


@pytest.fixture
async def api(faulty: System) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(faulty, timeout=15.0) as client:
        yield client


@pytest.fixture
async def mongo(faulty: System) -> AsyncIterator[AsyncMongoClient]:
    async with open_mongo(faulty.env["MONGO_URL"], serverSelectionTimeoutMS=20000) as client:
        yield client


async def ledger_holds(system: System, timeout: float = 30) -> None:
    settings = WarrenSettings(
        mongo_url=system.env["MONGO_URL"],
        mongo_db_prefix=system.env["MONGO_DB_PREFIX"],
        rabbit_url=system.env["RABBIT_URL"],
    )
    checks = await eventually(
        lambda: run_checks(settings, maildir=system.maildir),
        until=lambda cs: all(c.ok for c in cs),
        timeout=timeout,
        what="the ledger to balance",
    )
    # Orders, stock, settlements, money, emails and DLQs were really looked at.
    assert all(c.checked for c in checks if not c.name.startswith("no outbox")), checks


async def bus_events_of(
    mongo: AsyncMongoClient, system: System, order_id: str
) -> list[dict[str, Any]]:
    """Every event of one order as it went over the bus, rebuilt from the services' records."""
    order_db = mongo[system.database("order")]
    events = []
    async for doc in order_db["order_events"].find({"order_id": order_id, "outbox": "published"}):
        events.append(doc["envelope"])  # as the relay published it
    reservation = await mongo[system.database("inventory")]["reservations"].find_one(
        {"_id": order_id}
    )
    payment = await mongo[system.database("payment")]["payments"].find_one({"_id": order_id})
    for record, field in (
        (reservation, "outcome_event"),
        (reservation, "release_event"),
        (payment, "outcome_event"),
    ):
        if record and record.get(field):
            events.append(record[field])
    return events


# --- duplicates and shuffles ---------------------------------------------------------------------


async def test_every_event_delivered_twice_and_shuffled_changes_nothing(
    faulty: System, api: httpx.AsyncClient, mongo: AsyncMongoClient, rabbit_url: str
) -> None:
    orders = [
        await place(
            api, order_body(sku="CARROT-MUG", token="tok_visa", quantity=2), customer="dup"
        ),
        await place(
            api,
            order_body(sku="HAY-CUSHION", token="tok_chargeDeclined", quantity=1),
            customer="dup",
        ),
    ]
    for order_id in orders:
        await until_status(api, order_id, FINAL)
    await ledger_holds(faulty)
    stock_before = {
        d["_id"]: d async for d in mongo[faulty.database("inventory")]["stock"].find({})
    }
    mails_before = len(faulty.emails())

    replay = [
        event for order_id in orders for event in await bus_events_of(mongo, faulty, order_id)
    ]
    assert len(replay) >= 7
    duplicated = replay * 2
    random.Random(7).shuffle(duplicated)
    for event in duplicated:
        await publish_raw(
            rabbit_url,
            topology.EVENTS.name,
            event["type"],
            json.dumps(event, default=str).encode(),
            message_id=event["id"],
            publisher=topology.publisher_of(event["type"]),  # the operator vouches for copies
        )
    # A fence: an order placed after the duplicates goes through the same queues behind them.
    fence = await place(api, order_body(sku="CLOVER-TEA"), customer="fence")
    await until_status(api, fence, FINAL)
    await eventually(
        lambda: len(faulty.emails_for(fence)), until=lambda n: n == 2, what="the fence's emails"
    )

    for order_id, status in zip(orders, ("CONFIRMED", "CANCELLED"), strict=True):
        assert await status_of(api, order_id) == status
    stock_after = {d["_id"]: d async for d in mongo[faulty.database("inventory")]["stock"].find({})}
    for sku in ("CARROT-MUG", "HAY-CUSHION"):
        assert stock_after[sku] == stock_before[sku]
    charges = mongo[faulty.database("payment")]["gateway_charges"]
    assert await charges.count_documents({"order_id": {"$in": orders}, "status": "captured"}) == 1
    assert len(faulty.emails()) == mails_before + 2  # only the fence's two
    await ledger_holds(faulty)


# --- poison ----------------------------------------------------------------------------------


@pytest.fixture
def dlq_tool(rabbit_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DLQ tool (cli/dlq.py) reads RABBIT_URL like every Warren command."""
    monkeypatch.setenv("RABBIT_URL", rabbit_url)


async def test_a_poison_event_is_dead_lettered_within_a_second_and_orders_keep_flowing(
    faulty: System, api: httpx.AsyncClient, rabbit_url: str, dlq_tool: None
) -> None:
    poison_id = f"poison-{uuid.uuid4()}"
    sent = time.monotonic()
    await publish_raw(
        rabbit_url,
        topology.EVENTS.name,
        "order.placed",
        b'{"type": "order.placed", "data": "not an order"}',
        message_id=poison_id,
    )

    async def dead() -> list[dict[str, Any]]:
        return await dlq.show_messages(topology.INVENTORY_ORDER_PLACED.name, 50)

    shown = await eventually(
        dead, until=lambda ms: any(m["message_id"] == poison_id for m in ms), timeout=5
    )
    assert time.monotonic() - sent < 2.0  # "within a second", with slack for a busy CI
    [message] = [m for m in shown if m["message_id"] == poison_id]
    assert message["reason"].startswith("poison:")
    assert message["headers"]["x-warren-original-queue"] == "inventory.order-placed"
    # pub/sub: notification got the same poison, and dead-lettered it too
    notified = await dlq.show_messages(topology.NOTIFICATION_ORDER_EVENTS.name, 50)
    assert any(m["message_id"] == poison_id for m in notified)
    order_id = await place(api, order_body())
    assert await until_status(api, order_id, FINAL) == "CONFIRMED"
    await dlq.purge_queue(topology.INVENTORY_ORDER_PLACED.name)
    await dlq.purge_queue(topology.NOTIFICATION_ORDER_EVENTS.name)
    await dlq.purge_queue(topology.AUDIT_EVENTS.name)  # the audit got it too


async def test_garbage_on_the_email_queue_is_dead_lettered_and_emails_keep_going(
    faulty: System, api: httpx.AsyncClient, rabbit_url: str, dlq_tool: None
) -> None:
    """Reproduced: Celery acked undecodable bytes away with one log line."""
    garbage_id = f"garbage-{uuid.uuid4()}"
    await publish_raw(
        rabbit_url,
        "",  # Celery's tasks go through the default exchange
        topology.NOTIFICATION_EMAILS.name,
        b"\x00\x01 not a task at all",
        message_id=garbage_id,
        content_type="application/json",
    )
    dead = await eventually(
        lambda: dlq.show_messages(topology.NOTIFICATION_EMAILS.name, 50),
        until=lambda ms: any(m["message_id"] == garbage_id for m in ms),
        what="the garbage in notification.emails.dlq",
    )
    [message] = [m for m in dead if m["message_id"] == garbage_id]
    assert message["reason"].startswith("broker: rejected")
    order_id = await place(api, order_body())
    await until_status(api, order_id, FINAL)
    await eventually(lambda: len(faulty.emails_for(order_id)), until=lambda n: n == 2)
    await dlq.purge_queue(topology.NOTIFICATION_EMAILS.name)


async def test_a_quote_request_that_cannot_be_read_is_answered_and_kept_in_the_dlq(
    faulty: System, rabbit_url: str, dlq_tool: None
) -> None:
    """Reproduced: poison on inventory.quotes was rejected and dropped (the queue had no DLQ)."""
    client = RpcClient(rabbit_url, app_id="test")
    try:
        reply = await client.request(
            topology.INVENTORY_QUOTES.name, {"lines": "not a list"}, timeout=5
        )
    finally:
        await client.close()
    assert json.loads(reply)["error"].startswith("poison:")
    [dead] = await eventually(
        lambda: dlq.show_messages(topology.INVENTORY_QUOTES.name, 5), until=lambda ms: len(ms) == 1
    )
    assert dead["headers"]["x-warren-original-queue"] == "inventory.quotes"
    await dlq.purge_queue(topology.INVENTORY_QUOTES.name)


# --- the database goes away ----------------------------------------------------------------------

PAYMENTS = ("payment_1", "payment_2")


@contextmanager
def slow_payments(system: System) -> Iterator[None]:
    """Charging takes 1.5 s, so an outage can start while an order waits to be charged.
    Afterwards, whatever happened: the database is up and charging is fast again."""
    for name in PAYMENTS:
        system.restart(name, PAYMENT_LATENCY_MS="1500")
    try:
        yield
    finally:
        if not system.processes["mongo"].running():
            system.start("mongo")
        for name in PAYMENTS:
            system.restart(name, PAYMENT_LATENCY_MS="0")


def _retries(system: System, order_id: str) -> list[str]:
    """The payment replicas' "will retry" log lines for this order."""
    lines = []
    for name in PAYMENTS:
        log = (system.log_dir / f"{name}.log").read_text(errors="replace")
        lines += [line for line in log.splitlines() if "will retry" in line and order_id in line]
    return lines


async def test_a_database_outage_is_retried_with_backoff_then_processed(
    faulty: System, api: httpx.AsyncClient
) -> None:
    with slow_payments(faulty):
        order_id = await place(api, order_body(sku="EAR-MUFFS"))
        await until_status(api, order_id, {"RESERVED"})
        faulty.stop("mongo")
        outage_started = time.monotonic()
        await eventually(
            lambda: _retries(faulty, order_id),
            until=lambda lines: len(lines) >= 1,
            timeout=15,
            what="a retry while the database is down",
        )
        # Meanwhile a new order gets a clear "retry later", not a 500; so does a read, and
        # sooner than the client's 10 s database timeout.
        refused = await api.post("/orders", json=order_body(sku="EAR-MUFFS"))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
        asked = time.monotonic()
        unread = await api.get(f"/orders/{order_id}")
        assert unread.status_code == 503 and unread.headers["Retry-After"] == "2", unread.text
        assert time.monotonic() - asked < 5
        faulty.start("mongo")
        assert await until_status(api, order_id, FINAL, timeout=40) == "CONFIRMED"
        retries = _retries(faulty, order_id)
        # Backoff, not a hot loop: a handful of attempts over the outage, not hundreds.
        assert 1 <= len(retries) <= 3, retries
        assert time.monotonic() - outage_started > 1
    await ledger_holds(faulty)


async def test_retries_exhausted_go_to_the_dlq_and_a_replay_completes_the_order(
    faulty: System, api: httpx.AsyncClient, dlq_tool: None
) -> None:
    with slow_payments(faulty):
        order_id = await place(api, order_body(sku="TUNNEL-KIT"))
        await until_status(api, order_id, {"RESERVED"})
        faulty.stop("mongo")

        async def dead() -> list[dict[str, Any]]:
            return await dlq.show_messages(topology.PAYMENT_STOCK_RESERVED.name, 50)

        # 4 attempts (first + retries after 1 s, 2 s and 4 s), each failing on the database.
        [message] = await eventually(
            dead, until=lambda ms: len(ms) == 1, timeout=60, what="the DLQ"
        )
        assert message["reason"] == "retries exhausted"
        assert message["headers"]["x-warren-attempts"] == 4
        assert message["correlation_id"] == order_id
        faulty.start("mongo")
        assert await status_of(api, order_id) == "RESERVED"
    # Charging is fast again: the replay goes through.
    assert await dlq.replay_messages(topology.PAYMENT_STOCK_RESERVED.name, None) == 1
    assert await until_status(api, order_id, FINAL) == "CONFIRMED"
    await ledger_holds(faulty)


# --- a saga that cannot finish --------------------------------------------------------------


async def test_an_order_stuck_past_its_saga_deadline_is_cancelled_and_compensated(
    faulty: System, api: httpx.AsyncClient, mongo: AsyncMongoClient
) -> None:
    """The gateway is down for longer than the order may wait: nothing stays non-final."""
    faulty.restart("order", SAGA_DEADLINE_SECONDS="3", SAGA_SWEEP_SECONDS="0.5")
    for name in PAYMENTS:
        faulty.restart(name, PAYMENT_ERROR_RATE="1")
    try:
        stock = mongo[faulty.database("inventory")]["stock"]
        before = await stock.find_one({"_id": "HOP-SOCKS"})
        order_id = await place(api, order_body(sku="HOP-SOCKS", quantity=2))
        order = await final_order(api, order_id, timeout=30)
        assert order["status"] == "CANCELLED"
        assert order["cancel_reason"] == "saga deadline passed"

        async def settled() -> dict[str, Any] | None:
            return await mongo[faulty.database("inventory")]["reservations"].find_one(
                {"_id": order_id}
            )

        await eventually(settled, until=lambda r: r and r["state"] == "released", what="release")
        # The charge still being retried finds the order cancelled and charges nothing.
        await eventually(
            lambda: mongo[faulty.database("payment")]["payments"].find_one({"_id": order_id}),
            until=lambda p: p and p["status"] == "cancelled",
            what="payment's cancelled record",
        )
    finally:
        faulty.restart("order", SAGA_DEADLINE_SECONDS="600", SAGA_SWEEP_SECONDS="5")
        for name in PAYMENTS:
            faulty.restart(name, PAYMENT_ERROR_RATE="0")
    after = await stock.find_one({"_id": "HOP-SOCKS"})
    assert (after["available"], after["sold"]) == (before["available"], before["sold"])
    charges = mongo[faulty.database("payment")]["gateway_charges"]
    assert await charges.count_documents({"order_id": order_id}) == 0
    await ledger_holds(faulty)


# --- processes killed between "saved" and "published" -------------------------------------------


async def test_inventory_killed_after_saving_its_decision_still_announces_it(
    faulty: System, api: httpx.AsyncClient, mongo: AsyncMongoClient, tmp_path: Path
) -> None:
    marker = tmp_path / "inventory-crashed"
    faulty.restart(
        "inventory",
        WARREN_CRASH_AT="inventory.order-placed:after-handler",
        WARREN_CRASH_MARKER=str(marker),
    )
    try:
        order_id = await place(api, order_body(sku="BURROW-LAMP"))
        await eventually(marker.exists, timeout=15, what="inventory to crash")
        assert await status_of(api, order_id) == "PENDING"
        reservations = mongo[faulty.database("inventory")]["reservations"]
        saved = await reservations.find_one({"_id": order_id})
        assert saved is not None and saved["state"] == "reserved"  # saved, but never published

        faulty.restart_after_crash("inventory")
        assert await until_status(api, order_id, FINAL) == "CONFIRMED"
        payment = await mongo[faulty.database("payment")]["payments"].find_one({"_id": order_id})
        # The redelivered order.placed re-announced the *same* stock.reserved event.
        assert payment["outcome_event"]["causation_id"] == saved["outcome_event"]["id"]
    finally:
        faulty.restart("inventory", WARREN_CRASH_AT="")
    await ledger_holds(faulty)


async def test_order_service_killed_after_saving_an_order_still_publishes_it_and_a_retry_gets_it(
    faulty: System, api: httpx.AsyncClient, mongo: AsyncMongoClient, tmp_path: Path
) -> None:
    """The client saw the connection drop after the order was saved. Its retry (same key) must
    get that order back, not place a second one: one order, one charge, two emails."""
    marker = tmp_path / "order-crashed"
    faulty.restart("order", WARREN_CRASH_AT="order.after-append", WARREN_CRASH_MARKER=str(marker))
    customer = f"crash-{uuid.uuid4().hex[:6]}"
    body = order_body(sku="MOON-RABBIT")
    signed_in = as_customer(customer)
    key = {"Idempotency-Key": str(uuid.uuid4()), **signed_in}
    try:
        with pytest.raises(httpx.TransportError):
            await api.post("/orders", json=body, headers=key)
        assert marker.exists()
        faulty.restart_after_crash("order")
        retried = await api.post("/orders", json=body, headers=key)
        assert retried.status_code == 202, retried.text
        order_id = retried.json()["order_id"]
        # The retry also made sure the order can be read (its projection died with the crash).
        assert (await api.get(f"/orders/{order_id}", headers=signed_in)).status_code == 200
        assert await until_status(api, order_id, FINAL) == "CONFIRMED"  # the outbox published it
    finally:
        faulty.restart("order", WARREN_CRASH_AT="")
    listing = await api.get("/orders", headers=signed_in)
    assert [item["order_id"] for item in listing.json()["items"]] == [order_id]
    charges = mongo[faulty.database("payment")]["gateway_charges"]
    assert await charges.count_documents({"order_id": order_id, "status": "captured"}) == 1
    await eventually(
        lambda: len(faulty.emails_for(order_id)), until=lambda n: n == 2, what="two emails"
    )
    await ledger_holds(faulty)
    assert len(faulty.emails_for(order_id)) == 2


# --- the broker restarts ---------------------------------------------------------------------


def _local_rabbitmqctl(rabbit_url: str) -> list[str] | None:
    if urlparse(rabbit_url).hostname not in ("127.0.0.1", "localhost"):
        return None
    return rabbitmqctl_command()


def _amqp_answers(rabbit_url: str) -> bool:
    url = urlparse(rabbit_url)
    try:
        socket.create_connection((url.hostname, url.port or 5672), timeout=1).close()
    except OSError:
        return False
    return True


async def test_a_broker_restart_with_200_orders_in_flight_loses_nothing(
    faulty: System, rabbit_url: str
) -> None:
    rabbitmqctl = _local_rabbitmqctl(rabbit_url)
    if rabbitmqctl is None:
        pytest.skip("needs the local RabbitMQ and rabbitmqctl as root (stop_app/start_app)")
    accepted: list[str] = []
    refused = 0

    async def shopper(client: httpx.AsyncClient, n: int) -> None:
        nonlocal refused
        for _ in range(n):
            try:
                response = await client.post(
                    "/orders",
                    json=order_body(
                        sku=random.choice(["RABBIT-PLUSH", "WARREN-MAP", "LETTUCE-BAG"])
                    ),
                )
            except httpx.TransportError:
                refused += 1
                continue
            if response.status_code == 202:
                accepted.append(response.json()["order_id"])
            else:
                assert response.status_code == 503, response.text
                refused += 1

    async with api_client(faulty, timeout=15.0) as client:
        load = asyncio.gather(*(shopper(client, 20) for _ in range(10)))
        await eventually(
            lambda: len(accepted),
            until=lambda n: n >= 60,
            timeout=30,
            what="orders in flight",
        )
        subprocess.run([*rabbitmqctl, "stop_app"], check=True, capture_output=True, timeout=60)
        await eventually(lambda: _amqp_answers(rabbit_url), until=lambda up: not up, timeout=30)
        subprocess.run([*rabbitmqctl, "start_app"], check=True, capture_output=True, timeout=120)
        await eventually(lambda: _amqp_answers(rabbit_url), timeout=60, what="RabbitMQ back")
        await load
        assert len(accepted) + refused == 200
        assert len(accepted) >= 60

        async def not_final() -> list[str]:
            statuses = await asyncio.gather(*(status_of(client, o) for o in accepted))
            return [o for o, s in zip(accepted, statuses, strict=True) if s not in FINAL]

        await eventually(
            not_final, until=lambda left: not left, timeout=120, what="every accepted order final"
        )
    await ledger_holds(faulty, timeout=60)
    # The services reconnected by themselves: a new order goes through.
    async with api_client(faulty, timeout=15.0) as client:
        order_id = await place(client, order_body())
        assert await until_status(client, order_id, FINAL) == "CONFIRMED"
