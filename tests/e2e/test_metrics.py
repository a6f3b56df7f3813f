"""Every service serves its metrics on its HTTP port (/metrics), and after a few orders each
metric of docs/13-monitoring.md has a sample: the business ones Warren records (how messages
ended, sagas, the outbox, the quote, emails) and the ones FastStream records for it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from urllib.parse import unquote, urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from shared import topology
from shared.testing.system import BIN, System, publish_raw
from tests.support.metrics import BROKER_METRICS, EXPECTED
from tests.support.orders import final_order, order_body
from tests.support.polling import eventually


def families(system: System, process: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    answer = httpx.get(f"http://127.0.0.1:{system.ports[process]}/metrics", timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(answer.text)
    }


async def test_every_metric_has_a_sample_after_two_orders(
    system: System, api: httpx.AsyncClient
) -> None:
    for token in ("tok_visa", "tok_chargeDeclined"):
        placed = await api.post("/orders", json=order_body(token=token))
        assert placed.status_code == 202
        await final_order(api, placed.json()["order_id"])
    served = {
        process: families(system, process)
        for process in system.ports
        if process in {"order", "inventory", "payment_1", "notification", "audit"}
    }
    missing = [
        f"{family} on {process}"
        for family, processes in EXPECTED.items()
        for process in processes
        if not served[process].get(family)
    ]
    assert not missing, missing
    finished = {
        (labels["state"], labels["reason"])
        for name, labels, value in served["order"]["warren_orders_finished"]
        if name.endswith("_total") and value >= 1
    }
    assert {("CONFIRMED", "none"), ("CANCELLED", "payment_failed")} <= finished
    outcomes = {labels["outcome"] for _, labels, _ in served["inventory"]["warren_messages"]}
    assert "handled" in outcomes


async def test_no_metric_label_names_an_order(system: System, api: httpx.AsyncClient) -> None:
    """Low cardinality: an order id in a label would be a series per order."""
    for process in ("order", "inventory", "notification"):
        for family, samples in families(system, process).items():
            if family == "target_info":  # the process itself (its instance id): one series
                continue
            for _, labels, _ in samples:
                assert not any("order" in key and "id" in key for key in labels), labels
                assert not any(
                    len(value) == 36 and value.count("-") == 4 for value in labels.values()
                ), labels


async def test_warren_top_shows_the_queues_and_the_orders_of_the_running_system(
    system: System,
) -> None:
    """`warren top --once` against this system: every queue, its consumers, the orders. The
    broker refreshes its per-queue numbers every few seconds, and a test before this one may
    have just restarted payment: the screen is read again until it shows both replicas."""
    ports = system.ports
    services = ("order", "inventory", "payment_1", "notification", "audit")
    env = {
        **os.environ,
        **system.env,
        "WARREN_TOP_TARGETS": ",".join(f"{n}=http://127.0.0.1:{ports[n]}" for n in services),
        "WARREN_VHOST": unquote(urlsplit(system.env["RABBIT_URL"]).path[1:]) or "/",
        "RABBITMQ_METRICS_URL": f"http://{BROKER_METRICS}",
        "COLUMNS": "160",
    }

    def screen() -> str:
        return subprocess.run(
            [str(BIN / "warren"), "top", "--once", "--interval", "0.5"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    # payment.stock-reserved: two consumers (the two payment replicas).
    two_payments = re.compile(r"payment\.stock-reserved\s+│\s+\d+\s+│\s+\d+\s+│\s+2\s+│")
    shown = await eventually(
        lambda: asyncio.to_thread(screen), until=two_payments.search, timeout=30
    )
    assert "not answering" not in shown, shown
    assert re.search(r"CONFIRMED [1-9]", shown), shown
    assert re.search(r"outbox: \d+ pending", shown), shown


async def test_a_duplicate_is_counted_as_skipped_by_every_consumer_that_skips_it(
    system: System, api: httpx.AsyncClient, mongo: AsyncMongoClient
) -> None:
    """order.placed of a finished order, delivered again (the operator's copy): inventory
    re-announces its reservation, payment then its charge, and nothing changes. Every consumer
    the copies reach counts outcome "duplicate": inventory and notification the copy itself,
    the audit each of the three arrivals, payment the re-announced reservation, the order both
    re-announced replies (its state guard absorbs them)."""
    answer = await api.post("/orders", json=order_body())
    order_id = answer.json()["order_id"]
    await final_order(api, order_id)
    stored = await mongo[system.database("order")]["order_events"].find_one(
        {"order_id": order_id, "type": "order.placed"}
    )
    envelope = stored["envelope"]
    consumers = {  # queue -> the duplicates it must count
        topology.INVENTORY_ORDER_PLACED.name: 1,
        topology.NOTIFICATION_ORDER_EVENTS.name: 1,
        topology.AUDIT_EVENTS.name: 3,  # the copy and both re-announcements
        topology.PAYMENT_STOCK_RESERVED.name: 1,
        topology.ORDER_SAGA_REPLIES.name: 2,  # the re-announced stock.reserved, payment.succeeded
    }
    services = ("order", "inventory", "payment", "notification", "audit")
    processes = [p for p in system.ports if p.startswith(services)]

    def duplicates() -> dict[str, float]:
        counted = dict.fromkeys(consumers, 0.0)
        for process in processes:
            for name, labels, value in families(system, process).get("warren_messages", []):
                if (
                    name.endswith("_total")
                    and labels.get("queue") in consumers
                    and labels.get("outcome") == "duplicate"
                ):
                    counted[labels["queue"]] += value
        return counted

    before = duplicates()
    await publish_raw(
        system.env["RABBIT_URL"],
        topology.EVENTS.name,
        "order.placed",
        json.dumps(envelope, default=str).encode(),
        message_id=envelope["id"],
        publisher="order",
    )
    expected = {queue: before[queue] + n for queue, n in consumers.items()}
    # At least these (a stray copy elsewhere in the shared system may add to them).
    await eventually(
        duplicates,
        until=lambda counted: all(counted[q] >= n for q, n in expected.items()),
        what="the duplicates",
    )
