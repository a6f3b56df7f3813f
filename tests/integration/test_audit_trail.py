"""The audit trail on the real broker: every event that reaches the audit is recorded with the
publisher RabbitMQ checked -- a forgery too, with its verdict, where every other consumer
dead-letters it -- and ``warren audit <order id>`` shows it; a retried event keeps the routing
key it came with and is recorded once; a fake broker event is refused; and, on a broker with
the event exchange plugin, a failed login shows up in ``warren audit --broker``.

The broker tests provision the users in a vhost of their own, as ``make run`` does
(``warren topology provision``), and run the audit service as a process, as ``make run`` does.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from aiormq.exceptions import ChannelNotFoundEntity
from mirakuru import HTTPExecutor

from services.audit.domain import broker_event, trail_entry
from services.audit.handlers import AuditDeps, record_event
from services.audit.repository import AuditTrail
from shared import messaging, topology
from shared.contracts import Envelope, PaymentSucceeded, StockRejected
from shared.messaging import VERIFIED, Provenance
from shared.settings import WarrenSettings
from shared.testing.memory_mongo import AsyncMongomockDatabase
from shared.testing.system import BIN, REPO, free_port, open_mongo, rabbitmqctl_command
from tests.support.broker_users import Broker, provision, provisioned_vhost
from tests.support.dlq import dead_letters
from tests.support.polling import eventually

ORDER = "7d1f5a3e-0000-4000-8000-0000000a0d17"
NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

needs_users = pytest.mark.skipif(
    rabbitmqctl_command() is None, reason="provisioning users needs rabbitmqctl (as root)"
)


# --- the store, on the stand-in and on mongomock -------------------------------------------------


async def test_the_trail_is_written_once_per_arrival_and_read_in_time_order(db: Any) -> None:
    trail = AuditTrail(db)
    await trail.create_indexes()
    paid = Envelope.wrap(
        PaymentSucceeded(order_id=ORDER, payment_id="ch", amount_cents=1),
        source="payment",
        occurred_at=NOON + timedelta(seconds=2),
    )
    rejected = Envelope.wrap(
        StockRejected(order_id=ORDER, reason="none left"), source="inventory", occurred_at=NOON
    )
    for envelope, publisher in ((paid, "payment"), (rejected, "inventory"), (paid, "payment")):
        provenance = Provenance(publisher, VERIFIED, envelope.type)
        await trail.record(trail_entry(envelope, provenance, NOON + timedelta(minutes=1)))
    entries = await trail.order_trail(ORDER)
    assert [(e["type"], e["publisher"]) for e in entries] == [
        ("stock.rejected", "inventory"),
        ("payment.succeeded", "payment"),
    ]
    assert entries[0]["occurred_at"].replace(tzinfo=UTC) == NOON
    for n in range(3):
        headers = {"name": f"user-{n}", "timestamp_in_ms": 1796102500000 + n}
        await trail.record_broker_event(broker_event("user.created", headers, NOON))
    latest = await trail.latest_broker_events(2)
    assert [e["user"] for e in latest] == ["user-1", "user-2"]


# --- on the broker -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(rabbit_url: str) -> Iterator[Broker]:
    """A vhost of its own, provisioned as `make run` provisions the broker."""
    if rabbitmqctl_command() is None:
        pytest.skip("provisioning users needs rabbitmqctl (as root)")
    with provisioned_vhost(rabbit_url, "audit") as provisioned:
        assert "audit" in provisioned.passwords, "BROKER_PASSWORD_AUDIT: see .env.example"
        yield provisioned


class Audit:
    """The audit service as a process (as `make run` starts it), and its database."""

    def __init__(self, broker: Broker, mongo_url: str) -> None:
        self.broker, self.mongo_url = broker, mongo_url
        self.prefix = f"audit{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.env = {
            "RABBIT_URL": broker.url("audit"),
            "MONGO_URL": mongo_url,
            "MONGO_DB_PREFIX": self.prefix,
            "RETRY_DELAYS_SECONDS": "[1]",
            "PYTHONUNBUFFERED": "1",
            "OTEL_SDK_DISABLED": "true",
        }
        self.process = HTTPExecutor(
            [str(BIN / "python"), "-m", "services.audit", "--port", str(self.port)],
            url=f"http://127.0.0.1:{self.port}/readyz",
            status=200,
            envvars={**os.environ, **self.env},
            cwd=str(REPO),
            timeout=60,
        )

    def warren_audit(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, "COLUMNS": "250", "RABBIT_URL": self.broker.operator}
        return subprocess.run(
            [str(BIN / "warren"), "audit", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    async def collection(self, name: str) -> list[dict[str, Any]]:
        async with open_mongo(self.mongo_url) as client:
            return [doc async for doc in client[f"{self.prefix}_audit"][name].find({})]


@pytest.fixture
def audit(broker: Broker, mongo_url: str) -> Iterator[Audit]:
    running = Audit(broker, mongo_url)
    running.process.start()
    try:
        yield running
    finally:
        running.process.stop()


async def publish(
    url: str, envelope: Envelope, *, exchange: str, routing_key: str, user_id: str
) -> None:
    """Publish ``envelope`` as the user of ``url`` (``exchange`` "" is the default exchange)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = (
            await channel.get_exchange(exchange, ensure=False)
            if exchange
            else channel.default_exchange
        )
        message = aio_pika.Message(
            envelope.model_dump_json().encode(),
            message_id=envelope.id,
            correlation_id=envelope.correlation_id,
            user_id=user_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await target.publish(message, routing_key=routing_key)


FORGED = "forged: payment.succeeded is published by payment, this one by notification"


@needs_users
async def test_a_forgery_is_recorded_with_its_verdict_and_shows_in_warren_audit(
    broker: Broker, audit: Audit
) -> None:
    """Notification may write to the default exchange (it hands emails to Celery): it drops a
    payment.succeeded -- a copy of a genuine one, same id -- straight into the audit's queue.
    Order's consumer would dead-letter it as forged; the audit records it, with the verdict,
    beside the genuine one, and dead-letters nothing."""
    order_id = str(uuid.uuid4())
    paid = Envelope.wrap(
        PaymentSucceeded(order_id=order_id, payment_id="ch_1", amount_cents=1250),
        source="payment",
    )
    await publish(
        broker.url("payment"),
        paid,
        exchange=topology.EVENTS.name,
        routing_key=paid.type,
        user_id="payment",
    )
    await publish(
        broker.url("notification"),
        paid,
        exchange="",
        routing_key=topology.AUDIT_EVENTS.name,
        user_id="notification",
    )

    trail = await eventually(
        lambda: audit.collection("trail"), until=lambda found: len(found) == 2, timeout=20
    )
    assert {(e["event_id"], e["publisher"], e["verdict"], e["routing_key"]) for e in trail} == {
        (paid.id, "payment", "verified", "payment.succeeded"),
        (paid.id, "notification", FORGED, "audit.events"),
    }
    assert await dead_letters(broker.operator, topology.AUDIT_EVENTS) == []

    shown = audit.warren_audit(order_id)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    [genuine] = [line for line in shown.stdout.splitlines() if "verified" in line]
    [forged] = [line for line in shown.stdout.splitlines() if "forged" in line]
    assert "payment.succeeded v1" in genuine and "│ payment " in genuine
    assert FORGED in forged and "│ notification " in forged and "audit.events" in forged
    nothing = audit.warren_audit(str(uuid.uuid4()))
    assert nothing.returncode == 1 and "no audit records" in nothing.stdout


class FailsOnce:
    """The audit's handler, with a database that stalls on the first call."""

    def __init__(self) -> None:
        self.trail = AuditTrail(AsyncMongomockDatabase("warren_audit"))
        self.calls = 0

    async def __call__(self, envelope: Envelope, event: Any) -> list[Envelope]:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("the database stalled (simulated)")
        return await record_event(envelope, event, AuditDeps(self.trail))


@needs_users
async def test_a_retried_event_keeps_the_routing_key_it_came_with_and_is_recorded_once(
    broker: Broker,
) -> None:
    """The retry copy comes back through shop.requeue, by the queue's name: the consumer reads
    the original routing key, and the publisher, from the copy it made itself."""
    handler = FailsOnce()
    settings = WarrenSettings(rabbit_url=broker.url("audit"), service_name="audit")
    consumer = messaging.make_broker(settings)
    messaging.subscribe_events(
        consumer,
        topology.AUDIT_EVENTS,
        dict.fromkeys(topology.AUDIT_EVENTS.events, handler),
        retry_delays=(1,),
        identity=messaging.Identity(user="audit", operators=settings.broker_operators),
    )
    await consumer.start()
    rejected = Envelope.wrap(StockRejected(order_id=ORDER, reason="none left"), source="inventory")
    try:
        await publish(
            broker.url("inventory"),
            rejected,
            exchange=topology.EVENTS.name,
            routing_key=rejected.type,
            user_id="inventory",
        )
        [entry] = await eventually(
            lambda: handler.trail.order_trail(ORDER), until=lambda found: len(found) == 1
        )
    finally:
        await consumer.stop()
    assert handler.calls == 2
    assert (entry["publisher"], entry["verdict"], entry["routing_key"]) == (
        "inventory",
        "verified",
        "stock.rejected",
    )


@needs_users
async def test_a_fake_broker_event_is_dead_lettered_as_forged_not_recorded(
    broker: Broker, audit: Audit
) -> None:
    """The broker's event exchange is internal: only the broker publishes there. A "failed
    login" dropped into the audit's queue by another service is refused."""
    connection = await aio_pika.connect(broker.url("notification"))
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        fake = aio_pika.Message(
            b"",
            message_id=f"fake-{uuid.uuid4()}",
            user_id="notification",
            headers={"name": "admin", "error": "nothing to see", "timestamp_in_ms": 1},
        )
        await channel.default_exchange.publish(fake, topology.AUDIT_BROKER_EVENTS.name)
    [dead] = await eventually(
        lambda: dead_letters(broker.operator, topology.AUDIT_BROKER_EVENTS),
        until=lambda found: len(found) == 1,
    )
    assert dead.headers["x-warren-reason"] == (
        "poison: forged: not from the broker's event exchange (exchange default, user notification)"
    )
    assert await audit.collection("broker_events") == []


# --- the broker's own events (RabbitMQ's event exchange plugin) ----------------------------------


async def has_broker_events(rabbit_url: str) -> bool:
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        try:
            await (await connection.channel()).get_exchange(topology.BROKER_EVENTS)
        except ChannelNotFoundEntity:
            return False
    return True


@pytest.fixture(scope="module")
async def broker_with_events(rabbit_url: str) -> Broker:
    """The broker under test, on the vhost of RABBIT_URL, if the broker publishes its events
    there (the plugin declares amq.rabbitmq.event in the default vhost): `make test-rabbitmq4`'s
    node has the plugin (scripts/rabbitmq4.sh), the machine's 3.10 broker may not."""
    if rabbitmqctl_command() is None:
        pytest.skip("provisioning users needs rabbitmqctl (as root)")
    if not await has_broker_events(rabbit_url):
        pytest.skip(
            f"no {topology.BROKER_EVENTS} at {urlsplit(rabbit_url).path or '/'}: "
            "rabbitmq_event_exchange not enabled (scripts/rabbitmq4.sh enables it)"
        )
    return provision(rabbit_url)


@pytest.fixture
async def audit_of_broker_events(
    broker_with_events: Broker, mongo_url: str
) -> AsyncIterator[Audit]:
    running = Audit(broker_with_events, mongo_url)
    running.process.start()
    try:
        yield running
    finally:
        running.process.stop()


async def test_a_failed_login_shows_up_in_warren_audit_broker(
    audit_of_broker_events: Audit,
) -> None:
    audit = audit_of_broker_events
    intruder = f"mallory-{uuid.uuid4().hex[:6]}"
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(audit.broker.url(intruder, password="guessed"))
    logins = await eventually(
        lambda: audit.collection("broker_events"),
        until=lambda found: any(e["user"] == intruder for e in found),
        what=f"the failed login of {intruder} in the audit",
    )
    [failed] = [e for e in logins if e["user"] == intruder]
    assert failed["event"] == "user.authentication.failure"
    assert failed["peer"].startswith("127.0.0.1:")
    assert "invalid credentials" in failed["detail"]
    shown = audit.warren_audit("--broker", "--limit", "200")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    [line] = [line for line in shown.stdout.splitlines() if intruder in line]
    assert "user.authentication.failure" in line
