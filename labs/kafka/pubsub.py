"""Kafka pub/sub: one topic, one consumer group per subscriber; the log keeps everything.

A topic is a log: consuming does not remove. Each subscriber is a consumer group with its
own committed offset, so inventory, notification and analytics each read every order.
Analytics goes offline, COUNT orders are published, analytics comes back and resumes from
its committed offset: it gets everything. Then audit, a group that did not exist when the
orders were published, reads them all from the beginning (`auto_offset_reset="earliest"`):
replay, for as long as the topic's retention keeps them (7 days by default).

Run:  .venv/bin/python -m labs.kafka.pubsub [--count 5]   (KAFKA_BOOTSTRAP, default localhost:9092)
Test: tests/labs/test_kafka.py (skipped where no Kafka answers)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from faststream.kafka import KafkaBroker

from labs.common import KAFKA_BOOTSTRAP, OrderPlaced, Say, Tally, lab_parser, unique, wait_until
from labs.kafka import delete_topics

SUBSCRIBERS = ("inventory", "notification", "analytics")


# --8<-- [start:subscriber]
def subscriber_app(bootstrap: str, topic: str, name: str, tally: Tally) -> KafkaBroker:
    """One subscriber service: its own consumer group, so its own offset in the log."""
    broker = KafkaBroker(bootstrap, logger=None)

    @broker.subscriber(topic, group_id=f"{topic}.{name}", auto_offset_reset="earliest")
    async def on_order_placed(event: OrderPlaced) -> None:
        tally.add(name, event.order_id, event.sent_at)

    return broker


# --8<-- [end:subscriber]


@dataclass
class PubSubResult:
    received: dict[str, int]  # per group, over both batches (audit: all, read afterwards)
    lost: dict[str, int]


async def demo(bootstrap: str = KAFKA_BOOTSTRAP, count: int = 5, say: Say = print) -> PubSubResult:
    topic, tally = unique("orders"), Tally()
    listening = {name: subscriber_app(bootstrap, topic, name, tally) for name in SUBSCRIBERS}
    publisher = KafkaBroker(bootstrap, logger=None)
    try:
        await publisher.start()
        for app in listening.values():
            await app.start()  # creates the topic, joins its group
        say(f"1. inventory, notification and analytics: a consumer group each on {topic}")
        await listening.pop("analytics").stop()
        say("2. analytics goes offline (its group's committed offset stays)")
        for i in range(count):
            await publisher.publish(OrderPlaced(order_id=i), topic=topic)
        say(f"3. published {count} orders")
        listening["analytics"] = subscriber_app(bootstrap, topic, "analytics", tally)
        await listening["analytics"].start()
        for i in range(count, 2 * count):
            await publisher.publish(OrderPlaced(order_id=i), topic=topic)
        say(f"4. analytics is back; published {count} more")
        expected = dict.fromkeys(SUBSCRIBERS, 2 * count)
        await wait_until(lambda: tally.reached(expected), 60, lambda: f"all of {tally.counts()}")
        listening["audit"] = subscriber_app(bootstrap, topic, "audit", tally)
        await listening["audit"].start()
        await wait_until(lambda: tally.count("audit") >= 2 * count, 60, "the replay")
        say(f"5. audit, a new group, replays the log from the start: {tally.count('audit')}")
    finally:
        for app in (*listening.values(), publisher):
            await app.stop()
        await delete_topics(bootstrap, topic)
    lost = {name: 2 * count - tally.count(name) for name in SUBSCRIBERS}
    say(f"6. received {tally.counts()}; lost while offline: {lost}")
    return PubSubResult(tally.counts(), lost)


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--bootstrap", default=KAFKA_BOOTSTRAP, help="default: %(default)s")
    parser.add_argument("--count", type=int, default=5, help="orders per batch")
    args = parser.parse_args()
    asyncio.run(demo(args.bootstrap, args.count))


if __name__ == "__main__":
    main()
