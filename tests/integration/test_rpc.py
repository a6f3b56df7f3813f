"""Request-reply over direct reply-to against the real RabbitMQ: concurrency, timeouts, tracing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared.rpc import RpcClient, RpcUnavailableError


@pytest.fixture
async def responder(rabbit_url: str) -> AsyncIterator[tuple[str, list[aio_pika.IncomingMessage]]]:
    """A queue whose consumer answers only once 5 requests are waiting (then all of them)."""
    name = f"test.rpc.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(rabbit_url)
    channel = await connection.channel()
    # Exclusive: ours alone and deleted with the connection. A transient queue that is not
    # exclusive is refused by RabbitMQ 4.3.
    queue = await channel.declare_queue(name, exclusive=True)
    waiting: list[aio_pika.IncomingMessage] = []
    seen: list[aio_pika.IncomingMessage] = []

    async def on_request(message: aio_pika.IncomingMessage) -> None:
        await message.ack()
        seen.append(message)
        if json.loads(message.body).get("n") == "never":
            return  # this one is never answered
        waiting.append(message)
        if len(waiting) == 5:
            for request in waiting:
                n = json.loads(request.body)["n"]
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        json.dumps({"twice": n * 2}).encode(),
                        correlation_id=request.correlation_id,
                    ),
                    routing_key=request.reply_to or "",
                )
            waiting.clear()

    await queue.consume(on_request)
    yield name, seen
    await connection.close()


async def test_requests_are_in_flight_together(rabbit_url: str, responder) -> None:  # type: ignore[no-untyped-def]
    # The responder answers only when 5 requests wait at once: a client that serialises its
    # requests (one round trip at a time) would time out here.
    queue, _ = responder
    client = RpcClient(rabbit_url, app_id="test")
    try:
        replies = await asyncio.gather(
            *(client.request(queue, {"n": n}, timeout=5) for n in range(5))
        )
    finally:
        await client.close()
    assert [json.loads(body) for body in replies] == [{"twice": n * 2} for n in range(5)]


async def test_no_reply_in_time_is_a_clear_error_and_expires(rabbit_url: str, responder) -> None:  # type: ignore[no-untyped-def]
    queue, seen = responder
    client = RpcClient(rabbit_url, app_id="test")
    try:
        with pytest.raises(RpcUnavailableError, match=r"within 0\.3s"):
            await client.request(queue, {"n": "never"}, timeout=0.3)
        assert client._pending == {}  # nothing left waiting
    finally:
        await client.close()
    assert seen[0].expiration is not None  # the broker drops a request nobody took in time


async def test_unroutable_request_fails_fast(rabbit_url: str) -> None:
    client = RpcClient(rabbit_url, app_id="test")
    try:
        with pytest.raises(RpcUnavailableError, match="no queue"):
            await client.request(f"no.such.queue.{uuid.uuid4().hex}", {}, timeout=5)
    finally:
        await client.close()


async def test_request_is_a_client_span_and_carries_its_context(rabbit_url: str, responder) -> None:  # type: ignore[no-untyped-def]
    queue, seen = responder
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = RpcClient(rabbit_url, app_id="test", tracer_provider=provider)
    token = context.attach(baggage.set_baggage("order.id", "o-42"))
    try:
        await asyncio.gather(*(client.request(queue, {"n": n}, timeout=5) for n in range(5)))
    finally:
        context.detach(token)
        await client.close()
    spans = {
        span.attributes["messaging.message.conversation_id"]: span
        for span in exporter.get_finished_spans()
    }
    assert len(spans) == 5
    for request in seen:
        span = spans[request.correlation_id]
        assert span.name == f"default.{queue} request" and span.kind is SpanKind.CLIENT
        # The responder's consumer span becomes a child of this span; baggage rides along.
        trace_id, span_id = str(request.headers["traceparent"]).split("-")[1:3]
        assert (int(trace_id, 16), int(span_id, 16)) == (
            span.context.trace_id,
            span.context.span_id,
        )
        assert "order.id=o-42" in str(request.headers["baggage"])


async def test_a_lost_connection_fails_its_requests_at_once_and_the_next_one_reconnects(
    rabbit_url: str,
    responder,  # type: ignore[no-untyped-def]
) -> None:
    queue, seen = responder
    client = RpcClient(rabbit_url, app_id="test")
    try:
        waiting = asyncio.create_task(client.request(queue, {"n": "never"}, timeout=30))
        while not seen:  # the request is out
            await asyncio.sleep(0.01)
        lost = client._connection
        assert lost is not None
        started = asyncio.get_running_loop().time()
        await lost.close()  # as when the broker goes away
        with pytest.raises(RpcUnavailableError, match="connection lost"):
            await waiting
        assert asyncio.get_running_loop().time() - started < 1  # not the 30 s timeout
        replies = await asyncio.gather(
            *(client.request(queue, {"n": n}, timeout=5) for n in range(5))
        )
        assert client._connection is not lost
    finally:
        await client.close()
    assert [json.loads(body) for body in replies] == [{"twice": n * 2} for n in range(5)]
