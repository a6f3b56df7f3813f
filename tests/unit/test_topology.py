"""The topology module is the only place names live; compose's definitions must match it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared import topology
from shared.settings import RETRY_DELAYS_SECONDS


def test_the_exported_definitions_carry_the_topology_and_the_user_from_the_environment(
    tmp_path: Path,
) -> None:
    """What compose's broker-definitions job runs: a changed password gives a new hash."""
    out = tmp_path / "definitions.json"
    env = {**os.environ, "RABBITMQ_USER": "warren", "RABBITMQ_PASSWORD": "changed"}
    subprocess.run(
        [str(Path(sys.executable).parent / "warren"), "topology", "export", "--output", str(out)],
        cwd=tmp_path,  # no .env here: the values come from the environment alone
        env=env,
        check=True,
        capture_output=True,
    )
    exported = json.loads(out.read_text())
    assert exported == topology.definitions(user="warren", password="changed")
    [user] = exported["users"]
    assert user["password_hash"] == topology.password_hash("warren", "changed")
    assert user["password_hash"] != topology.password_hash("warren", "warren")


def test_every_consumer_queue_has_a_dead_letter_queue_bound_by_its_name() -> None:
    defs = topology.definitions()
    queues = {queue["name"]: queue for queue in defs["queues"]}
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in defs["bindings"]}
    for consumer in topology.ALL_QUEUES_WITH_DLQ:
        args = queues[consumer.name]["arguments"]
        if consumer.broker_dead_letters:
            assert args["x-dead-letter-exchange"] == topology.DEAD_LETTER.name
            assert args["x-dead-letter-routing-key"] == consumer.name
        else:  # inventory.quotes: an expired request is dropped; poison is copied by Warren
            assert "x-dead-letter-exchange" not in args
        assert consumer.dlq_name in queues
        assert (topology.DEAD_LETTER.name, consumer.dlq_name, consumer.name) in bindings
        assert (topology.REQUEUE.name, consumer.name, consumer.name) in bindings


def test_order_placed_reaches_inventory_notification_and_the_audit() -> None:
    bound = {
        b["destination"]
        for b in topology.definitions()["bindings"]
        if b["source"] == topology.EVENTS.name and b["routing_key"] == "order.placed"
    }
    assert bound == {"inventory.order-placed", "notification.order-events", "audit.events"}


def test_saga_and_email_queues_are_quorum_queues_with_a_delivery_limit() -> None:
    for consumer in (*topology.CONSUMER_QUEUES, topology.NOTIFICATION_EMAILS):
        args = consumer.queue.arguments or {}
        assert args["x-queue-type"] == "quorum"
        assert args["x-delivery-limit"] == topology.DELIVERY_LIMIT


def test_retry_queues_dead_letter_back_through_the_requeue_exchange() -> None:
    for delay in RETRY_DELAYS_SECONDS:
        args = topology.retry_queue(delay).arguments or {}
        assert args["x-message-ttl"] == delay * 1000
        assert args["x-dead-letter-exchange"] == topology.REQUEUE.name


def test_password_hash_is_rabbitmq_sha256_format() -> None:
    import base64
    import hashlib

    raw = base64.b64decode(topology.password_hash("warren", "secret"))
    salt, digest = raw[:4], raw[4:]
    assert digest == hashlib.sha256(salt + b"secret").digest()


def test_the_retry_budget_outlasts_a_ten_minute_outage() -> None:
    assert sum(RETRY_DELAYS_SECONDS) > 600


def test_inventory_refuses_a_lease_longer_than_the_retry_budget() -> None:
    import pydantic

    from services.inventory.settings import InventorySettings

    with pytest.raises(pydantic.ValidationError, match="shorter than the retry budget"):
        InventorySettings(retry_delays_seconds=(1, 2, 4), decision_lease_seconds=30)
    assert InventorySettings(retry_delays_seconds=(1, 2, 4), decision_lease_seconds=5)


def _matches(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None  # RabbitMQ's regexes: PCRE, unanchored search


def test_each_service_may_publish_only_its_own_event_types() -> None:
    payment = topology.topic_permissions(topology.access_of("payment"))  # type: ignore[arg-type]
    assert payment["exchange"] == "shop.events"
    assert _matches(payment["write"], "payment.succeeded")
    assert not _matches(payment["write"], "stock.reserved")
    assert not _matches(payment["write"], "payment.succeededX")
    notification = topology.topic_permissions(topology.access_of("notification"))  # type: ignore[arg-type]
    assert not _matches(notification["write"], "order.placed")  # publishes nothing


def test_each_service_may_configure_and_read_only_its_own_queues() -> None:
    payment = topology.permissions(topology.access_of("payment"))  # type: ignore[arg-type]
    assert _matches(payment["configure"], "payment.stock-reserved")
    assert not _matches(payment["configure"], "order.saga-replies")
    assert not _matches(payment["configure"], "shop.events")  # no exchange of its own
    assert _matches(payment["read"], "payment.stock-reserved")
    assert not _matches(payment["read"], "order.saga-replies")
    assert not _matches(payment["read"], "payment.stock-reserved.dlq")  # the operator's
    assert not _matches(payment["write"], "amq.default")  # no straight-to-a-queue publishing


def test_the_exported_definitions_hold_one_user_per_service_without_tags() -> None:
    defs = topology.definitions(
        user="warren", password="w", service_passwords={"order": "o", "payment": "p"}
    )
    assert {u["name"]: u["tags"] for u in defs["users"]} == {
        "warren": ["administrator"],
        "order": [],
        "payment": [],
    }
    assert {t["user"] for t in defs["topic_permissions"]} == {"order", "payment"}


def test_every_published_event_type_has_exactly_one_publisher() -> None:
    from shared.contracts import EVENT_TYPES

    for cls in EVENT_TYPES.values():
        publishers = [
            a.user for a in topology.SERVICES if cls.TYPE in {e.TYPE for e in a.publishes}
        ]
        assert len(publishers) == 1, (cls.TYPE, publishers)
