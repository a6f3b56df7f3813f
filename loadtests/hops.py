"""One messaging hop, like for like: what Warren's consumer costs against aio-pika alone.

Every Warren handler does the same thing with the broker: take a message from a quorum queue,
publish what it caused (persistent, mandatory, confirmed) and only then ack the message it
took. Measured here three ways, on the same queues (quorum, with Warren's arguments), the same
bodies (an ``order.placed`` in, a ``stock.reserved`` out, real envelopes), headers, prefetch
(the services' default) and event loop (uvloop, as uvicorn runs the services):

* ``raw`` -- aio-pika alone: decode the JSON, publish the next event's JSON, ack;
* ``faststream`` -- a bare FastStream subscriber and publish, no middlewares;
* ``warren`` -- Warren's broker (``make_broker``: its tracing and user-id middlewares) and its
  consumer (``subscribe_events``: the envelope checked, the handler routed by type, the event
  published with confirms, then the ack, outcome and duration counted).

Each reports messages/s and the CPU this process spent per message (the broker's CPU is the
same work for all three and not counted). Tracing is not configured here: the middlewares run
with OpenTelemetry's no-op tracer, so this is the messaging cost, not the tracing cost (the saga
stages measure that).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika

from shared import topology
from shared.contracts import Envelope, OrderPlaced, PricedLine, StockReserved
from shared.messaging import H_PUBLISHER
from shared.sealing import RecipientKey, generate_key

HOP_IN = topology.ConsumerQueue("bench.hop.in", (OrderPlaced,), retried=False)
HOP_OUT = "bench.hop.out"
_KEY = RecipientKey("bench", generate_key().public_key())


def _placed() -> Envelope:
    order_id = str(uuid.uuid4())
    line = PricedLine(sku="CARROT-MUG", quantity=1, unit_price_cents=1250)
    event = OrderPlaced(
        order_id=order_id,
        customer_id="bench",
        lines=(line,),
        total_cents=1250,
        sealed_payment_token=_KEY.seal("tok_visa", aad=order_id),
    )
    return Envelope.wrap(event, source="order", sequence=1, previous_sequence=0)


def _reserved(placed: Envelope, event: OrderPlaced) -> Envelope:
    """The event a hop publishes: what inventory answers to ``placed``."""
    reserved = StockReserved(
        order_id=event.order_id,
        lines=event.lines,
        amount_cents=event.total_cents,
        sealed_payment_token=event.sealed_payment_token,
    )
    return Envelope.wrap(reserved, source="inventory", causation=placed, sequence=1)


def _properties(envelope: Envelope) -> dict[str, Any]:
    """What Warren puts on every published event (shared.messaging.publish_event)."""
    return {
        "delivery_mode": aio_pika.DeliveryMode.PERSISTENT,
        "message_id": envelope.id,
        "correlation_id": envelope.correlation_id,
        "type": envelope.type,
        "content_type": "application/json",
        "timestamp": envelope.occurred_at,
        "headers": {H_PUBLISHER: envelope.source},
    }


async def _prepare(url: str, count: int) -> None:
    """Fresh in and out queues; ``count`` order.placed events waiting in the first."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for name in (HOP_IN.name, HOP_OUT):
            await channel.queue_delete(name)
        events = await channel.declare_exchange(topology.EVENTS.name, "topic", durable=True)
        await channel.declare_exchange(topology.DEAD_LETTER.name, "direct", durable=True)
        source = HOP_IN.queue
        await channel.declare_queue(source.name, durable=True, arguments=source.arguments)
        out = await channel.declare_queue(HOP_OUT, durable=True, arguments=source.arguments)
        await out.bind(events, routing_key=StockReserved.TYPE)
        for offset in range(0, count, 256):
            batch = [_placed() for _ in range(min(256, count - offset))]
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            json.dumps(e.model_dump(mode="json")).encode(), **_properties(e)
                        ),
                        routing_key=HOP_IN.name,
                    )
                    for e in batch
                )
            )


async def _cleanup(url: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in (HOP_IN.name, HOP_OUT):
            await channel.queue_delete(name)


async def _measure(
    url: str, count: int, start: Callable[[asyncio.Event], Awaitable[Callable[[], Awaitable[None]]]]
) -> dict[str, float]:
    """Prepare ``count`` messages, start a consumer (``start`` returns its stop), time it."""
    await _prepare(url, count)
    done = asyncio.Event()
    cpu, wall = time.process_time(), time.perf_counter()
    stop = await start(done)
    await done.wait()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await stop()
    await _cleanup(url)
    return {"msg_s": count / wall, "cpu_us_per_msg": cpu / count * 1e6, "messages": count}


def _counter(count: int, done: asyncio.Event) -> Callable[[], None]:
    seen = 0

    def one() -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            done.set()

    return one


async def raw_hop(url: str, count: int, prefetch: int) -> dict[str, float]:
    async def start(done: asyncio.Event) -> Callable[[], Awaitable[None]]:
        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.set_qos(prefetch_count=prefetch)
        events = await channel.get_exchange(topology.EVENTS.name)
        queue = await channel.get_queue(HOP_IN.name)
        counted = _counter(count, done)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            placed = Envelope.model_validate(json.loads(message.body))
            reply = _reserved(placed, placed.payload())
            body = json.dumps(reply.model_dump(mode="json")).encode()
            await events.publish(
                aio_pika.Message(body, **_properties(reply)),
                routing_key=reply.type,
                mandatory=True,
            )
            await message.ack()
            counted()

        await queue.consume(on_message)
        return connection.close

    return await _measure(url, count, start)


async def faststream_hop(url: str, count: int, prefetch: int, *, warren: bool) -> dict[str, float]:
    """A FastStream consumer: bare (``warren=False``), or Warren's broker and consumer."""
    from faststream.rabbit import RabbitBroker
    from faststream.rabbit.schemas import Channel

    from shared.messaging import make_broker, publish_event, subscribe_events
    from shared.settings import WarrenSettings

    async def start(done: asyncio.Event) -> Callable[[], Awaitable[None]]:
        counted = _counter(count, done)
        if warren:
            settings = WarrenSettings(rabbit_url=url, service_name="bench", prefetch=prefetch)
            broker = make_broker(settings)

            async def hop(envelope: Envelope, event: OrderPlaced) -> list[Envelope]:
                counted()  # the consumer publishes it, then acks: counted a moment early
                return [_reserved(envelope, event)]

            subscribe_events(broker, HOP_IN, {OrderPlaced: hop}, retry_delays=())
        else:
            broker = RabbitBroker(
                url,
                default_channel=Channel(prefetch_count=prefetch, publisher_confirms=True),
                logger=None,  # FastStream's "Received"/"Processed" lines: off, as above
            )

            @broker.subscriber(HOP_IN.queue)
            async def bare(body: dict[str, Any]) -> None:
                placed = Envelope.model_validate(body)
                await publish_event(broker, _reserved(placed, placed.payload()))
                counted()

        await broker.start()
        return broker.stop

    return await _measure(url, count, start)


async def hops(url: str, count: int, prefetch: int) -> dict[str, Any]:
    """The three hops, and Warren's cost against aio-pika's (CPU per message, and rate).
    Logging as the benchmark's services log (LOG_LEVEL=WARNING): a line per message would
    measure the terminal."""
    from shared.observability import configure_logging

    configure_logging("bench", "WARNING", "console")
    raw = await raw_hop(url, count, prefetch)
    bare = await faststream_hop(url, count, prefetch, warren=False)
    warren = await faststream_hop(url, count, prefetch, warren=True)
    return {
        "prefetch": prefetch,
        "raw": raw,
        "faststream": bare,
        "warren": warren,
        "warren_vs_raw_cpu": warren["cpu_us_per_msg"] / raw["cpu_us_per_msg"],
        "warren_vs_raw_rate": raw["msg_s"] / warren["msg_s"],
    }
