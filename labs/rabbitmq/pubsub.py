"""RabbitMQ pub/sub: a fanout exchange, one durable queue per subscriber; offline loses nothing.

Inventory, notification and analytics each own a queue bound to one exchange. Analytics goes
offline, COUNT orders are published, analytics comes back, COUNT more are published. Every
subscriber gets all 2 x COUNT: while analytics was down, its queue kept its copies. This is
the row the other brokers are compared with (Warren's own shop.events works this way:
docs/02-pub-sub.md).

Run:  .venv/bin/python -m labs.rabbitmq.pubsub [--count 5]   (vhost warren-labs)
Test: tests/labs/test_rabbitmq.py::test_an_offline_subscriber_finds_its_messages_queued
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

from labs.common import LABS_RABBIT_URL, OrderPlaced, Say, Tally, lab_parser, unique, wait_until
from labs.rabbitmq import check_vhost

SUBSCRIBERS = ("inventory", "notification", "analytics")


@dataclass
class PubSubResult:
    received: dict[str, int]  # per subscriber, over both batches
    lost: dict[str, int]  # published while it was offline, never received


# --8<-- [start:subscriber]
def subscriber_app(url: str, events: RabbitExchange, name: str, tally: Tally) -> RabbitBroker:
    """One subscriber service: its own connection, its own durable queue on the exchange."""
    broker = RabbitBroker(url, logger=None)
    queue = RabbitQueue(f"{events.name}.{name}", durable=True)

    @broker.subscriber(queue, events)
    async def on_order_placed(event: OrderPlaced) -> None:
        tally.add(name, event.order_id, event.sent_at)

    return broker


# --8<-- [end:subscriber]


async def demo(url: str = LABS_RABBIT_URL, count: int = 5, say: Say = print) -> PubSubResult:
    events = RabbitExchange(unique("orders"), type=ExchangeType.FANOUT, durable=True)
    tally = Tally()
    listening = {name: subscriber_app(url, events, name, tally) for name in SUBSCRIBERS}
    publisher = RabbitBroker(url, logger=None)
    try:
        await publisher.start()
        for app in listening.values():
            await app.start()  # declares the exchange, its queue and the binding
        say(f"1. inventory, notification and analytics bind a queue each to {events.name}")

        await listening.pop("analytics").stop()
        say("2. analytics goes offline (its queue stays, bound)")
        for i in range(count):
            await publisher.publish(OrderPlaced(order_id=i), exchange=events, persist=True)
        say(f"3. published {count} orders (persistent, confirmed)")

        listening["analytics"] = subscriber_app(url, events, "analytics", tally)
        await listening["analytics"].start()
        for i in range(count, 2 * count):
            await publisher.publish(OrderPlaced(order_id=i), exchange=events, persist=True)
        say(f"4. analytics is back; published {count} more")

        expected = dict.fromkeys(SUBSCRIBERS, 2 * count)
        await wait_until(lambda: tally.reached(expected), 10, lambda: f"all of {tally.counts()}")
    finally:
        for app in listening.values():
            await app.stop()
        await clean_up(publisher, events)
        await publisher.stop()
    lost = {name: 2 * count - tally.count(name) for name in SUBSCRIBERS}
    say(f"5. received {tally.counts()}; lost while offline: {lost}")
    return PubSubResult(tally.counts(), lost)


async def clean_up(broker: RabbitBroker, events: RabbitExchange) -> None:
    for name in SUBSCRIBERS:
        queue = await broker.declare_queue(RabbitQueue(f"{events.name}.{name}", durable=True))
        await queue.delete(if_unused=False, if_empty=False)
    exchange = await broker.declare_exchange(events)
    await exchange.delete()


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--url", default=LABS_RABBIT_URL, help="RabbitMQ (default: %(default)s)")
    parser.add_argument("--count", type=int, default=5, help="orders per batch")
    args = parser.parse_args()
    asyncio.run(check_vhost(args.url))
    asyncio.run(demo(args.url, args.count))


if __name__ == "__main__":
    main()
