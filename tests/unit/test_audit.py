"""The audit trail, without a broker: what one arrival of an event leaves behind (who published
it, when, how it came -- never its data), once per event and publisher, in an insert-only
store; the broker's own security events read from their headers; and the whole saga on the
in-memory bus leaving every event of an order in its trail once."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.audit.domain import broker_event
from services.audit.handlers import HANDLERS, AuditDeps, record_event
from services.audit.repository import AuditTrail
from services.in_memory import open_shop
from services.inventory.catalog import CatalogItem
from shared import topology
from shared.contracts import EVENT_TYPES, Envelope, PaymentSucceeded
from shared.messaging import UNVERIFIED, VERIFIED, Provenance
from shared.testing.memory_mongo import AsyncMongomockDatabase
from shared.testing.system import PROCESSES_WITH_PORTS
from shared.testing.system import SERVICES as SYSTEM_SERVICES
from tests.support.events import order_placed
from tests.support.recording import Recording

REPO = Path(__file__).resolve().parents[2]

ORDER = "3f6c1d52-0000-4000-8000-00000000a0d1"
NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def placed(order_id: str = ORDER) -> Envelope:
    return Envelope.wrap(order_placed(order_id), source="order", occurred_at=NOON)


def paid(order_id: str = ORDER, **fields: Any) -> Envelope:
    data = PaymentSucceeded(order_id=order_id, payment_id="ch_1", amount_cents=1250)
    return Envelope.wrap(data, source="payment", occurred_at=NOON + timedelta(seconds=1), **fields)


class Audit:
    """The audit's handler with a store in memory, and the provenance a consumer would set."""

    def __init__(self) -> None:
        self.trail = AuditTrail(AsyncMongomockDatabase("warren_audit"))
        self.provenance: Provenance | None = None
        self.deps = AuditDeps(self.trail, provenance=lambda: self.provenance, clock=self.now)
        self.ticks = 0

    def now(self) -> datetime:
        self.ticks += 1
        return NOON + timedelta(minutes=self.ticks)

    async def arrives(self, envelope: Envelope, provenance: Provenance | None) -> None:
        self.provenance = provenance
        assert await record_event(envelope, envelope.payload(), self.deps) == []


@pytest.fixture
async def audit() -> Audit:
    audit = Audit()
    await audit.trail.create_indexes()
    return audit


def test_the_audit_queue_receives_every_event_of_the_contracts_and_handles_each() -> None:
    assert set(topology.AUDIT_EVENTS.events) == set(EVENT_TYPES.values())
    assert set(topology.AUDIT_EVENTS.routing_keys) == {cls.TYPE for cls in EVENT_TYPES.values()}
    assert set(HANDLERS[topology.AUDIT_EVENTS]) == set(EVENT_TYPES.values())
    assert topology.AUDIT_EVENTS.records_forgeries
    # Every other consumer still dead-letters a forgery.
    others = [q for q in topology.ALL_QUEUES_WITH_DLQ if q is not topology.AUDIT_EVENTS]
    assert not any(queue.records_forgeries for queue in others)


async def test_an_event_is_recorded_with_its_verified_publisher_and_without_its_data(
    audit: Audit,
) -> None:
    envelope = placed()
    await audit.arrives(envelope, Provenance("order", VERIFIED, "order.placed"))

    [entry] = await audit.trail.order_trail(ORDER)
    assert {k: v for k, v in entry.items() if k not in ("_id", "occurred_at", "received_at")} == {
        "event_id": envelope.id,
        "type": "order.placed",
        "version": 2,
        "source": "order",
        "publisher": "order",
        "verdict": "verified",
        "routing_key": "order.placed",
        "order_id": ORDER,
        "causation_id": None,
        "sequence": 1,
    }
    assert entry["occurred_at"].replace(tzinfo=UTC) == NOON
    assert entry["received_at"].replace(tzinfo=UTC) == NOON + timedelta(minutes=1)
    stored = json.dumps(entry, default=str)
    for payload in ("bugs-bunny", "CARROT-MUG", "ciphertext", envelope.data["total_cents"]):
        assert str(payload) not in stored


async def test_a_redelivered_event_is_recorded_once(audit: Audit) -> None:
    envelope = paid()
    provenance = Provenance("payment", VERIFIED, "payment.succeeded")
    for _ in range(3):  # a redelivery, a replay from the DLQ, a chaos duplicate
        await audit.arrives(envelope, provenance)
    [entry] = await audit.trail.order_trail(ORDER)
    assert entry["received_at"].replace(tzinfo=UTC) == NOON + timedelta(minutes=1)  # the first


async def test_a_forgery_with_a_genuine_events_id_is_recorded_beside_it(audit: Audit) -> None:
    """The id is the publisher's claim: a forger may copy a genuine event's. Each (event,
    publisher) is one record, so neither hides the other."""
    genuine = paid()
    forged = "forged: payment.succeeded is published by payment, this one by notification"
    await audit.arrives(genuine, Provenance("payment", VERIFIED, "payment.succeeded"))
    await audit.arrives(genuine, Provenance("notification", forged, "audit.events"))

    trail = await audit.trail.order_trail(ORDER)
    assert [(e["publisher"], e["verdict"], e["routing_key"]) for e in trail] == [
        ("payment", "verified", "payment.succeeded"),
        ("notification", forged, "audit.events"),
    ]


async def test_an_event_handled_outside_a_verifying_consumer_is_recorded_unverified(
    audit: Audit,
) -> None:
    await audit.arrives(placed(), None)  # the in-memory bus: nobody checked who sent it
    [entry] = await audit.trail.order_trail(ORDER)
    assert (entry["publisher"], entry["verdict"], entry["routing_key"]) == ("", UNVERIFIED, "")


async def test_an_orders_trail_is_in_the_order_its_events_occurred(audit: Audit) -> None:
    provenance = Provenance("payment", VERIFIED, "payment.succeeded")
    await audit.arrives(paid(), provenance)  # arrives first, occurred second
    await audit.arrives(placed(), Provenance("order", VERIFIED, "order.placed"))
    await audit.arrives(placed("another-order"), Provenance("order", VERIFIED, "order.placed"))
    trail = await audit.trail.order_trail(ORDER)
    assert [entry["type"] for entry in trail] == ["order.placed", "payment.succeeded"]


async def test_the_audit_only_ever_inserts_and_reads(audit: Audit) -> None:
    calls: Counter[str] = Counter()
    audit.trail.events = Recording(audit.trail.events, calls)  # type: ignore[assignment]
    audit.trail.broker_events = Recording(audit.trail.broker_events, calls)  # type: ignore[assignment]
    await audit.trail.create_indexes()
    for _ in range(2):
        await audit.arrives(paid(), Provenance("payment", VERIFIED, "payment.succeeded"))
        await audit.trail.record_broker_event(broker_event("user.created", {"name": "x"}, NOON))
    await audit.trail.order_trail(ORDER)
    await audit.trail.latest_broker_events(10)
    assert calls.keys() <= {"create_index", "insert_one", "find", "find_one"}, calls


# --- the broker's own security events ---------------------------------------------------------

# As RabbitMQ 4.0's event exchange sends them (measured): the error as a list of character
# codes (an Erlang string), the peer as an Erlang tuple (here an IPv4-mapped IPv6 address).
FAILED_LOGIN = {
    "auth_mechanism": "PLAIN",
    "connection_name": "127.0.0.1:56300 -> 127.0.0.1:5673",
    "connection_type": "network",
    "error": list(b"user 'guest' - invalid credentials"),
    "host": "{0,0,0,0,0,65535,32512,1}",
    "name": "guest",
    "peer_host": "{0,0,0,0,0,65535,32512,1}",
    "peer_port": 56300,
    "protocol": "{0,9,1}",
    "ssl": False,
    "timestamp_in_ms": 1796102500875,
}


def test_a_failed_login_is_read_from_the_event_headers() -> None:
    entry = broker_event("user.authentication.failure", FAILED_LOGIN, NOON)
    assert {k: v for k, v in entry.items() if k != "_id"} == {
        "event": "user.authentication.failure",
        "user": "guest",
        "vhost": None,
        "by": None,
        "peer": "127.0.0.1:56300",
        "detail": "user 'guest' - invalid credentials (PLAIN)",
        "at": datetime.fromtimestamp(1796102500.875, UTC),
        "received_at": NOON,
    }


def test_a_permission_granted_is_read_from_the_event_headers() -> None:
    headers = {
        "configure": ".*",
        "read": "^b$",
        "write": "^a$",
        "timestamp_in_ms": 1796102519565,
        "user": "payment",
        "user_who_performed_action": "rmq-cli",
        "vhost": "/",
    }
    entry = broker_event("permission.created", headers, NOON)
    assert (entry["user"], entry["vhost"], entry["by"], entry["peer"]) == (
        "payment",
        "/",
        "rmq-cli",
        None,
    )
    assert entry["detail"] == "configure .* write ^a$ read ^b$"


@pytest.mark.parametrize(
    ("peer_host", "port", "shown"),
    [
        ("{127,0,0,1}", 5000, "127.0.0.1:5000"),
        ("{0,0,0,0,0,65535,2561,5}", 6000, "10.1.0.5:6000"),
        ("{8193,3512,0,0,0,0,0,1}", 7000, "[2001:db8::1]:7000"),
        ("not a tuple", 8000, "not a tuple:8000"),
    ],
)
def test_the_peer_address_is_read_from_an_erlang_tuple(
    peer_host: str, port: int, shown: str
) -> None:
    headers = {"name": "x", "peer_host": peer_host, "peer_port": port, "timestamp_in_ms": 1}
    assert broker_event("user.authentication.failure", headers, NOON)["peer"] == shown


def test_the_same_broker_event_delivered_twice_has_one_key_and_two_events_two() -> None:
    first = broker_event("user.authentication.failure", FAILED_LOGIN, NOON)
    again = broker_event("user.authentication.failure", FAILED_LOGIN, NOON + timedelta(hours=1))
    other = broker_event("user.authentication.failure", {**FAILED_LOGIN, "peer_port": 56301}, NOON)
    assert first["_id"] == again["_id"] != other["_id"]


async def test_a_broker_event_is_recorded_once_and_listed_latest_last(audit: Audit) -> None:
    for _ in range(2):
        await audit.trail.record_broker_event(
            broker_event("user.authentication.failure", FAILED_LOGIN, NOON)
        )
    created = {"name": "mallory", "timestamp_in_ms": FAILED_LOGIN["timestamp_in_ms"] + 1}
    await audit.trail.record_broker_event(broker_event("user.created", created, NOON))
    listed = await audit.trail.latest_broker_events(10)
    assert [(e["event"], e["user"]) for e in listed] == [
        ("user.authentication.failure", "guest"),
        ("user.created", "mallory"),
    ]
    assert [e["event"] for e in await audit.trail.latest_broker_events(1)] == ["user.created"]


# --- the whole saga, in memory -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [None, 7])
async def test_every_event_of_an_order_is_in_its_trail_once_even_delivered_twice(
    seed: int | None,
) -> None:
    databases: dict[str, AsyncMongomockDatabase] = {}

    def database(service: str) -> AsyncMongomockDatabase:
        return databases.setdefault(service, AsyncMongomockDatabase(f"warren_{service}"))

    shop = await open_shop(database, catalog=[CatalogItem("CARROT-MUG", "Carrot mug", 1250, 5)])
    order_id = await shop.place("CARROT-MUG")
    await shop.bus.drain(twice=True, shuffle=random.Random(seed) if seed else None)

    trail = await shop.audit.trail.order_trail(order_id)
    published = {e.id: e.type for e in shop.bus.published if e.correlation_id == order_id}
    assert {entry["event_id"]: entry["type"] for entry in trail} == published
    assert len(trail) == len(published)  # once each, though every event arrived twice
    assert set(published.values()) >= {"order.placed", "payment.succeeded", "order.confirmed"}
    assert shop.bus.dead_letters == []


# --- who the audit is on the broker, and where it runs ------------------------------------------


def _matches(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None  # RabbitMQ's regexes: unanchored search


def test_the_audit_user_reads_its_own_queues_and_the_broker_events_and_publishes_nothing() -> None:
    access = topology.access_of("audit")
    assert access is not None
    granted = topology.permissions(access)
    for queue in ("audit.events", "audit.broker-events"):
        assert _matches(granted["configure"], queue) and _matches(granted["read"], queue)
    assert _matches(granted["read"], topology.BROKER_EVENTS)  # to bind its queue there
    assert not _matches(granted["write"], topology.BROKER_EVENTS)
    assert not _matches(granted["read"], "order.saga-replies")
    assert not _matches(granted["write"], "amq.default")  # nothing straight into a queue
    topic = topology.topic_permissions(access)
    assert all(_matches(topic["read"], cls.TYPE) for cls in EVENT_TYPES.values())
    assert not any(_matches(topic["write"], cls.TYPE) for cls in EVENT_TYPES.values())
    # Nobody else reads the broker's events, or the audit's queue.
    for other in topology.SERVICES:
        if other.user != "audit":
            assert not _matches(topology.permissions(other)["read"], topology.BROKER_EVENTS)
            assert not _matches(topology.permissions(other)["read"], "audit.events")


def test_the_definitions_hold_the_audit_queues_but_no_binding_to_the_broker_events() -> None:
    """A broker without the event exchange plugin must still load them: the audit binds its
    queue at start-up, when the exchange is there."""
    defs = topology.definitions()
    assert {"audit.events", "audit.broker-events"} <= {q["name"] for q in defs["queues"]}
    assert not [b for b in defs["bindings"] if b["source"] == topology.BROKER_EVENTS]


def test_the_audit_runs_wherever_the_services_run() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    audit = compose["services"]["audit"]
    assert audit["environment"]["RABBIT_URL"] == "amqp://audit@${BROKER_HOST:?set it in .env}:5672/"
    assert {"source": "broker_password_audit", "target": "rabbit_password"} in audit["secrets"]
    assert "8004/healthz" in " ".join(audit["healthcheck"]["test"])
    # Compose's broker loads the event exchange plugin, and keeps the image's own two: every
    # node of the profile cluster too (each publishes its own events).
    for node in ("rabbitmq", "rabbitmq-2", "rabbitmq-3"):
        mounts = compose["services"][node]["volumes"]
        assert "./infra/rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins:ro" in mounts
    plugins = (REPO / "infra/rabbitmq/enabled_plugins").read_text()
    listed = re.search(r"^\[(.*)\]\.$", plugins, re.MULTILINE)
    assert listed is not None
    assert set(listed.group(1).split(",")) == {
        "rabbitmq_management",
        "rabbitmq_prometheus",
        "rabbitmq_event_exchange",
        "rabbitmq_consistent_hash_exchange",  # partitions by order id (shared/ordering.py)
    }
    procfile = (REPO / "Procfile").read_text()
    assert "audit: RABBIT_URL=${RABBIT_URL_AUDIT:-" in procfile
    assert "python -m services.audit --port 8004" in procfile
    assert "audit" in PROCESSES_WITH_PORTS and "audit" in SYSTEM_SERVICES


class FakeBrokerEvent:
    """What FastStream hands the consumer for one message of the broker's event exchange."""

    def __init__(self) -> None:
        self.headers = dict(FAILED_LOGIN)
        self.raw_message = type(
            "Raw",
            (),
            {
                "exchange": topology.BROKER_EVENTS,
                "routing_key": "user.authentication.failure",
                "user_id": None,
            },
        )()
        self.acked = self.rejected = 0

    async def ack(self) -> None:
        self.acked += 1

    async def reject(self, requeue: bool = False) -> None:
        self.rejected += 1


async def test_a_broker_event_is_recorded_and_acked_once() -> None:
    """Reproduced on RabbitMQ 4.0.5: the consumer recorded the event, then raised while logging
    it (before the ack), so each event came back again and again."""
    from services.audit.broker_events import BrokerEventConsumer

    trail = AuditTrail(AsyncMongomockDatabase("audit"))
    await trail.create_indexes()
    consumer = BrokerEventConsumer(
        None,  # type: ignore[arg-type]  # nothing is published when all goes well
        trail,
        retry_delays=(1,),
        trusted=frozenset(),
        clock=lambda: NOON,
    )
    message = FakeBrokerEvent()
    await consumer.handle(message)  # type: ignore[arg-type]
    assert (message.acked, message.rejected) == (1, 0)
    recorded = [doc async for doc in trail.broker_events.find({})]
    assert [doc["event"] for doc in recorded] == ["user.authentication.failure"]
