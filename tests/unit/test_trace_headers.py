"""Broker hops carry the trace in the headers OTEL_PROPAGATORS names, not only W3C's.

FastStream's telemetry middleware reads and writes ``traceparent`` alone; Warren's middlewares
around it (``shared.messaging.broker_middlewares``) translate. These tests run a message
through two hops in FastStream's in-memory test broker, with the headers on the wire recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from faststream import BaseMiddleware
from faststream.rabbit import RabbitBroker, RabbitQueue, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.messaging import _reads_as_is, broker_middlewares
from shared.observability import span_processors

# What OTEL_PROPAGATORS=b3multi,baggage and the default (tracecontext,baggage) install.
B3_AND_BAGGAGE = CompositePropagator([B3MultiFormat(), W3CBaggagePropagator()])
W3C_DEFAULT = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


@pytest.fixture
def configured_propagator(request: pytest.FixtureRequest) -> Iterator[TextMapPropagator]:
    """Installs the test's propagator as the global one (what OTEL_PROPAGATORS sets)."""
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(request.param)
    try:
        yield request.param
    finally:
        propagate.set_global_textmap(before)


class OnTheWire(BaseMiddleware):
    """Listed before Warren's middlewares: records each message's headers as they arrived.

    The test broker delivers inside the publisher's call; a real consumer runs elsewhere, so
    the message is handled in an empty context: only the headers carry the trace across.
    """

    seen: list[dict[str, Any]]

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        self.seen.append(dict(msg.headers))
        token = otel_context.attach(Context())
        try:
            return await call_next(msg)
        finally:
            otel_context.detach(token)


async def place_an_order_through_two_hops() -> tuple[list[dict[str, Any]], list[ReadableSpan]]:
    """``orders.placed`` -> its consumer publishes ``stock.reserved`` -> that one's consumer.

    Returns the headers each message arrived with and every finished span.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    for processor in span_processors():
        provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    OnTheWire.seen = []
    broker = RabbitBroker(middlewares=(OnTheWire, *broker_middlewares(provider)))

    @broker.subscriber(RabbitQueue("orders.placed", exclusive=True))
    async def reserve_stock(message: RabbitMessage) -> None:
        await broker.publish({"sku": "CARROT-MUG"}, "stock.reserved")

    @broker.subscriber(RabbitQueue("stock.reserved", exclusive=True))
    async def take_payment(message: RabbitMessage) -> None:
        pass

    async with TestRabbitBroker(broker) as test_broker:
        token = otel_context.attach(baggage.set_baggage("order.id", "order-bugs-bunny"))
        try:
            with provider.get_tracer("test").start_as_current_span("POST /orders"):
                await test_broker.publish({"sku": "CARROT-MUG"}, "orders.placed")
        finally:
            otel_context.detach(token)
    return OnTheWire.seen, list(exporter.get_finished_spans())


def named(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


@pytest.mark.parametrize("configured_propagator", [B3_AND_BAGGAGE], indirect=True)
async def test_with_b3_configured_messages_carry_b3_headers_and_the_trace_goes_on(
    configured_propagator: TextMapPropagator,
) -> None:
    wire, spans = await place_an_order_through_two_hops()

    assert len(wire) == 2
    for headers in wire:
        assert {"x-b3-traceid", "x-b3-spanid", "x-b3-sampled"} <= headers.keys()
        assert "traceparent" not in headers  # FastStream's own format is not on the wire
        assert headers["baggage"] == "order.id=order-bugs-bunny"
    root = named(spans, "POST /orders")
    assert {span.context.trace_id for span in spans} == {root.context.trace_id}
    # Each consumer span is the child of the span whose id the producer sent in x-b3-spanid.
    for headers, queue in zip(wire, ("orders.placed", "stock.reserved"), strict=True):
        consumer = named(spans, f"default.{queue} process")
        assert consumer.parent is not None
        assert consumer.parent.span_id == int(headers["x-b3-spanid"], 16)
        assert named(spans, f"default.{queue} create").context.span_id == consumer.parent.span_id
    # The second hop was published from inside the first consumer.
    second_hop = named(spans, "default.stock.reserved create").parent
    assert second_hop is not None
    assert second_hop.span_id == named(spans, "default.orders.placed process").context.span_id
    assert all(span.attributes.get("order.id") == "order-bugs-bunny" for span in spans)


@pytest.mark.parametrize("configured_propagator", [W3C_DEFAULT], indirect=True)
async def test_by_default_messages_carry_w3c_headers(
    configured_propagator: TextMapPropagator,
) -> None:
    wire, spans = await place_an_order_through_two_hops()

    for headers in wire:
        assert {"traceparent", "baggage"} <= headers.keys()
        assert not any(key.startswith("x-b3-") for key in headers)
    assert len({span.context.trace_id for span in spans}) == 1
    consumer = named(spans, "default.stock.reserved process")
    assert consumer.parent is not None
    assert format(consumer.parent.span_id, "016x") == wire[1]["traceparent"].split("-")[2]


@pytest.mark.parametrize(
    "configured_propagator", [CompositePropagator([W3CBaggagePropagator()])], indirect=True
)
async def test_without_a_trace_propagator_each_hop_starts_a_trace_of_its_own(
    configured_propagator: TextMapPropagator,
) -> None:
    wire, spans = await place_an_order_through_two_hops()

    assert all(headers.keys().isdisjoint({"traceparent", "tracestate"}) for headers in wire)
    assert named(spans, "default.orders.placed process").context.trace_id != (
        named(spans, "POST /orders").context.trace_id
    )
    # The baggage still travels, and still tags the spans.
    assert all(headers["baggage"] == "order.id=order-bugs-bunny" for headers in wire)
    assert named(spans, "default.stock.reserved process").attributes["order.id"] == (
        "order-bugs-bunny"
    )


def test_a_propagator_reads_only_its_own_headers() -> None:
    """Why the translation is needed: B3 cannot see the W3C context FastStream writes."""
    with trace.get_tracer("test", tracer_provider=TracerProvider()).start_as_current_span("x"):
        w3c: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(w3c)
    assert not trace.get_current_span(B3MultiFormat().extract(w3c)).get_span_context().is_valid


@pytest.mark.parametrize(
    ("configured_propagator", "headers", "as_is"),
    [
        (W3C_DEFAULT, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}, True),
        (W3C_DEFAULT, {}, True),
        # Bytes are no header FastStream can read: translated, which drops them.
        (W3C_DEFAULT, {"traceparent": b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"}, False),
        (B3_AND_BAGGAGE, {}, False),
        # No trace propagator configured: an incoming traceparent must not be followed.
        (CompositePropagator([W3CBaggagePropagator()]), {}, False),
        (CompositePropagator([]), {}, False),
    ],
    indirect=["configured_propagator"],
)
def test_the_incoming_trace_is_translated_unless_faststream_reads_it_as_is(
    configured_propagator: TextMapPropagator, headers: dict[str, Any], as_is: bool
) -> None:
    assert _reads_as_is(headers) is as_is
