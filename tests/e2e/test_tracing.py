"""One trace per order: real exporters in real processes, received by the harness's OTLP receiver."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from cli import dlq
from cli.traces import trace_ids_of_order
from shared import topology
from shared.testing.system import System, publish_raw
from tests.support.orders import final_order, order_body, post_order
from tests.support.polling import eventually

SERVICES = {"order", "inventory", "payment", "notification", "notification-worker"}


async def place_and_finish(
    api: httpx.AsyncClient, token: str, headers: dict[str, str] | None = None
) -> tuple[str, str]:
    body = order_body(sku="CLOVER-TEA", token=token)
    response = await post_order(api, body, headers=headers, customer="tracer")
    order_id = response.json()["order_id"]
    await final_order(api, order_id, timeout=20)
    return order_id, response.headers["X-Trace-Id"]


def order_traces(system: System, order_id: str) -> dict[str, list[dict[str, Any]]]:
    """The order's spans by trace, leaving out the GET /orders/{id} polls that read it
    (as ``warren traces show`` does without ``--reads``)."""
    spans = system.spans()
    roots = {s["trace_id"]: s["name"] for s in spans if not s["parent_span_id"]}
    return {
        trace_id: [s for s in spans if s["trace_id"] == trace_id]
        for trace_id in trace_ids_of_order(spans, order_id)
        if not roots.get(trace_id, "").startswith("GET ")
    }


async def complete_trace(
    system: System, order_id: str, expect: set[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Wait until the order's trace holds a span for each (service, name) in ``expect``
    (spans arrive in export batches, in no particular order)."""

    def complete(traces: dict[str, list[dict[str, Any]]]) -> bool:
        seen = {(s["service"], s["name"]) for spans in traces.values() for s in spans}
        return {("order", "POST /orders"), *expect} <= seen and {s for s, _ in seen} >= SERVICES

    traces = await eventually(
        lambda: order_traces(system, order_id),
        until=complete,
        timeout=20,
        what=f"the trace of {order_id}",
    )
    assert len(traces) == 1, f"order {order_id} is spread over {len(traces)} traces"
    return next(iter(traces.values()))


def parent_of(spans: list[dict[str, Any]], span: dict[str, Any]) -> dict[str, Any]:
    [parent] = [s for s in spans if s["span_id"] == span["parent_span_id"]]
    return parent


def ancestors(spans: list[dict[str, Any]], span: dict[str, Any]) -> list[dict[str, Any]]:
    chain = []
    while span["parent_span_id"]:
        span = parent_of(spans, span)
        chain.append(span)
    return chain


def named(spans: list[dict[str, Any]], name: str, service: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name and s["service"] == service]
    assert found, (
        f"no span {name!r} from {service}; have {sorted({(s['service'], s['name']) for s in spans})}"
    )
    return found[0]


async def test_one_order_is_one_connected_trace_across_every_hop(
    system: System, api: httpx.AsyncClient
) -> None:
    # Tagged as load-test traffic would be: the tag must reach every span too.
    order_id, trace_id = await place_and_finish(
        api, "tok_visa", headers={"baggage": "synthetic_request=true"}
    )
    spans = await complete_trace(
        system,
        order_id,
        {
            ("inventory", "default.inventory.quotes process"),
            ("order", "outbox relay order.placed"),
            ("inventory", "shop.events.order.placed process"),
            ("notification", "shop.events.order.placed process"),
            ("payment", "shop.events.stock.reserved process"),
            ("order", "shop.events.payment.succeeded process"),
            ("notification", "shop.events.order.confirmed process"),
            ("notification", "apply_async/notification.send_email"),
            ("notification-worker", "run/notification.send_email"),
        },
    )

    assert spans[0]["trace_id"] == trace_id  # the API's X-Trace-Id names this trace
    assert all(s["attributes"].get("order.id") == order_id for s in spans)
    assert all(s["attributes"].get("synthetic_request") == "true" for s in spans)
    root = [s for s in spans if not s["parent_span_id"]]
    assert [(r["service"], r["name"]) for r in root] == [("order", "POST /orders")]

    # request-reply: inventory answers the quote inside the POST's trace
    quote = named(spans, "default.inventory.quotes process", "inventory")
    assert parent_of(spans, quote)["service"] == "order"
    # the outbox relay continues the trace the event was recorded in
    relay = named(spans, "outbox relay order.placed", "order")
    assert parent_of(spans, relay)["name"] == "POST /orders"
    # each broker hop: the consumer's span is a child of the producer's
    for consumer, producer in [
        ("inventory", "order"),  # order.placed
        ("notification", "order"),  # order.placed
    ]:
        span = named(spans, "shop.events.order.placed process", consumer)
        assert relay in ancestors(spans, span) and parent_of(spans, span)["service"] == producer
    payment = named(spans, "shop.events.stock.reserved process", "payment")
    assert parent_of(spans, payment)["service"] == "inventory"
    confirmed_at_order = named(spans, "shop.events.payment.succeeded process", "order")
    assert parent_of(spans, confirmed_at_order)["service"] == "payment"
    # the Celery task runs inside the trace of the event that asked for the email
    task = named(spans, "run/notification.send_email", "notification-worker")
    assert parent_of(spans, task)["name"] == "apply_async/notification.send_email"
    assert parent_of(spans, parent_of(spans, task))["service"] == "notification"
    # the database calls are in it too
    assert any(s["scope"].endswith("pymongo") for s in spans)
    # stable names: no per-request reply queue
    assert not any("amq.rabbitmq.reply-to" in s["name"] for s in spans)


async def test_a_declined_orders_trace_shows_the_compensation(
    system: System, api: httpx.AsyncClient
) -> None:
    order_id, _ = await place_and_finish(api, "tok_chargeDeclined")
    spans = await complete_trace(
        system,
        order_id,
        {
            ("inventory", "shop.events.stock.released publish"),
            ("inventory", "shop.events.payment.failed process"),
            ("order", "shop.events.payment.failed process"),
            ("order", "shop.events.stock.released process"),
            ("notification", "shop.events.order.cancelled process"),
            ("audit", "shop.events.payment.failed process"),
        },
    )
    release = named(spans, "shop.events.stock.released publish", "inventory")
    assert (
        parent_of(spans, parent_of(spans, release))["name"] == "shop.events.payment.failed process"
    )
    heard = Counter(
        s["service"]
        for s in spans
        if s["kind"] == "consumer" and s["name"] == "shop.events.payment.failed process"
    )
    assert heard == {"order": 1, "inventory": 1, "audit": 1}  # each hears it once


async def test_a_replayed_dead_letter_links_to_its_original_trace(
    system: System,
    api: httpx.AsyncClient,
    rabbit_url: str,
    mongo: AsyncMongoClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order_id, original_trace = await place_and_finish(api, "tok_visa")
    await complete_trace(system, order_id, {("notification-worker", "run/notification.send_email")})
    # Dead-letter a copy of the order's order.confirmed event, as the consumer would have.
    stored = await mongo[system.database("order")]["order_events"].find_one(
        {"order_id": order_id, "type": "order.confirmed"}
    )
    envelope = stored["envelope"]  # as the relay published it
    await publish_raw(
        rabbit_url,
        topology.DEAD_LETTER.name,
        topology.NOTIFICATION_ORDER_EVENTS.name,
        json.dumps(envelope).encode(),
        message_id=envelope["id"],
        correlation_id=order_id,
        headers={
            **stored["trace_context"],  # in whatever format OTEL_PROPAGATORS names
            "x-warren-reason": "retries exhausted",
            "x-warren-original-queue": topology.NOTIFICATION_ORDER_EVENTS.name,
            "x-warren-publisher": "order",  # as the consumer's DLQ copy records it
        },
    )

    replay = system.warren(
        "dlq",
        "replay",
        topology.NOTIFICATION_ORDER_EVENTS.name,
        "--id",
        envelope["id"],
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr

    def replayed_trace() -> dict[str, list[dict[str, Any]]]:
        spans = system.spans()
        replays = [
            s
            for s in spans
            if s["name"].startswith("dlq replay")
            and s["attributes"].get("messaging.message.id") == envelope["id"]
        ]
        return {
            r["trace_id"]: [s for s in spans if s["trace_id"] == r["trace_id"]] for r in replays
        }

    traces = await eventually(
        replayed_trace,
        until=lambda t: any(
            any(s["service"] == "notification" and s["kind"] == "consumer" for s in v)
            for v in t.values()
        ),
        timeout=20,
        what="the replay's trace",
    )
    [(replay_trace, spans)] = traces.items()
    assert replay_trace != original_trace
    [replay_span] = [s for s in spans if s["name"].startswith("dlq replay")]
    assert replay_span["links"][0]["trace_id"] == original_trace
    assert replay_span["service"] == "warren-cli"
    # The tool talks aio-pika directly; its instrumentation traced the publish, under the replay.
    [publish] = [s for s in spans if s["scope"].endswith("aio_pika")]
    assert parent_of(spans, publish) == replay_span
    consumer = next(s for s in spans if s["service"] == "notification" and s["kind"] == "consumer")
    assert replay_span in ancestors(spans, consumer)
    # The duplicate was recognised: still one email per event.
    emails = system.emails_for(order_id)
    assert len(emails) == len({m["Message-ID"] for m in emails}) == 2
    # And handled, not refused: the operator's copy is trusted to say order published it.
    monkeypatch.setenv("RABBIT_URL", rabbit_url)  # the DLQ tool reads it, as every command
    left = await dlq.show_messages(topology.NOTIFICATION_ORDER_EVENTS.name, 50)
    assert [m for m in left if m["message_id"] == envelope["id"]] == []
