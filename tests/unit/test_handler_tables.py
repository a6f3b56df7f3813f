"""Every queue a service consumes has a handler for each event class it receives -- and only
those; every consumer queue of the topology is consumed by exactly one service."""

from __future__ import annotations

from collections import Counter

import pytest

from services.audit.handlers import HANDLERS as AUDIT
from services.inventory.handlers import HANDLERS as INVENTORY
from services.notification.handlers import HANDLERS as NOTIFICATION
from services.order.handlers import HANDLERS as ORDER
from services.payment.handlers import HANDLERS as PAYMENT
from shared import topology
from shared.contracts import EVENT_TYPES, OrderPlaced, PaymentFailed
from shared.handlers import HandlerTableError, check_table

TABLES = {
    "order": ORDER,
    "inventory": INVENTORY,
    "payment": PAYMENT,
    "notification": NOTIFICATION,
    "audit": AUDIT,
}


@pytest.mark.parametrize("service", TABLES)
def test_each_table_handles_exactly_what_its_queues_receive(service: str) -> None:
    check_table(TABLES[service])
    for queue, handlers in TABLES[service].items():
        assert set(handlers) == set(queue.events), queue.name


def test_every_consumer_queue_is_consumed_by_exactly_one_service() -> None:
    consumers = Counter(queue for table in TABLES.values() for queue in table)
    assert set(consumers) == set(topology.CONSUMER_QUEUES)
    assert set(consumers.values()) == {1}


def test_routing_keys_are_the_event_types_of_the_contracts() -> None:
    types = {cls.TYPE for cls in EVENT_TYPES.values()}
    for queue in topology.CONSUMER_QUEUES:
        assert queue.routing_keys and set(queue.routing_keys) <= types, queue.name


def test_a_table_missing_a_handler_or_naming_a_stray_event_is_refused() -> None:
    async def handler(*_: object) -> list[object]:
        return []

    missing = {topology.INVENTORY_PAYMENT_OUTCOMES: {PaymentFailed: handler}}
    with pytest.raises(HandlerTableError, match="no handler for \\['PaymentSucceeded'\\]"):
        check_table(missing)  # type: ignore[arg-type]
    stray = {topology.PAYMENT_ORDER_CANCELLED: {OrderPlaced: handler}}
    with pytest.raises(HandlerTableError, match="never receives: \\['OrderPlaced'\\]"):
        check_table(stray)  # type: ignore[arg-type]
