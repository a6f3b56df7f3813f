"""RabbitMQ streams: a queue that is a log. Reading does not remove; a reader picks its offset.

A stream queue (`x-queue-type: stream`) keeps every message until its retention says
otherwise. COUNT orders are published first; then two readers come, one from the first
offset and one from offset COUNT // 2, and later a third one from the first offset again.
All of it over plain AMQP 0.9.1 (the `x-stream-offset` consumer argument): no stream plugin.
This is where RabbitMQ answers Kafka's "replay" and "a subscriber that joins late".

Run:  .venv/bin/python -m labs.rabbitmq.stream [--count 10]   (vhost warren-labs)
Test: tests/labs/test_rabbitmq.py::test_a_stream_replays_to_a_reader_that_joins_late
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue

from labs.common import LABS_RABBIT_URL, OrderPlaced, Say, Tally, lab_parser, unique, wait_until
from labs.rabbitmq import check_vhost, declare
from labs.rabbitmq.work_queue import delete


# --8<-- [start:reader]
def reader_app(url: str, stream: RabbitQueue, name: str, offset: int | str, tally: Tally):
    """A reader from `offset` ("first", "last", "next", or a number). A stream consumer needs
    a prefetch, and its acks only make room for more: they remove nothing."""
    broker = RabbitBroker(url, logger=None, default_channel=Channel(prefetch_count=100))

    @broker.subscriber(stream, consume_args={"x-stream-offset": offset})
    async def on_order_placed(event: OrderPlaced) -> None:
        tally.add(name, event.order_id, event.sent_at)

    return broker


# --8<-- [end:reader]


@dataclass
class StreamResult:
    received: dict[str, list[int]]  # the order ids each reader got, in order


async def demo(url: str = LABS_RABBIT_URL, count: int = 10, say: Say = print) -> StreamResult:
    stream = RabbitQueue(unique("orders"), queue_type=QueueType.STREAM, durable=True)
    tally = Tally()
    publisher = RabbitBroker(url, logger=None)
    readers = {
        "audit": reader_app(url, stream, "audit", "first", tally),
        "analytics": reader_app(url, stream, "analytics", count // 2, tally),
    }
    try:
        await publisher.connect()
        await declare(publisher, stream)
        for i in range(count):
            await publisher.publish(OrderPlaced(order_id=i), queue=stream, persist=True)
        say(f"1. published {count} orders to stream {stream.name} before anyone read")
        for app in readers.values():
            await app.start()
        await wait_until(lambda: tally.count("audit") >= count, 10, "audit's replay")
        await wait_until(lambda: tally.count("analytics") >= count - count // 2, 10, "offset")
        say(
            f"2. audit from 'first' got {tally.count('audit')}; analytics from offset "
            f"{count // 2} got {tally.count('analytics')}"
        )
        readers["late"] = reader_app(url, stream, "late", "first", tally)
        await readers["late"].start()
        await wait_until(lambda: tally.count("late") >= count, 10, "the late reader's replay")
        say(f"3. a reader that joins later, from 'first', still gets all {tally.count('late')}:")
        say("   reading removed nothing")
        return StreamResult(dict(tally.seen))
    finally:
        for app in readers.values():
            await app.stop()
        await publisher.stop()
        await delete(url, stream.name)


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--url", default=LABS_RABBIT_URL, help="RabbitMQ (default: %(default)s)")
    parser.add_argument("--count", type=int, default=10, help="orders")
    args = parser.parse_args()
    asyncio.run(check_vhost(args.url))
    asyncio.run(demo(args.url, args.count))


if __name__ == "__main__":
    main()
