"""Redis Pub/Sub: a subscriber that is listening gets every message; one that is not never will.

Three subscribers (inventory, notification, analytics) listen on one channel. Analytics goes
offline, COUNT orders are published, analytics comes back, COUNT more are published.
Inventory and notification get all of them; analytics gets only the second batch: Redis hands
a message to the connections subscribed at that instant and keeps no copy.

Run:  .venv/bin/python -m labs.redis.pubsub [--count 5]
Test: tests/labs/test_redis.py::test_an_offline_pubsub_subscriber_loses_what_was_published
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from faststream.redis import RedisBroker
from redis.asyncio import Redis

from labs.common import REDIS_URL, OrderPlaced, Say, Tally, lab_parser, unique, wait_until

SUBSCRIBERS = ("inventory", "notification", "analytics")


@dataclass
class PubSubResult:
    received: dict[str, int]  # per subscriber, over both batches
    lost: dict[str, int]  # published while it was offline, never received
    listeners_per_publish: list[int]  # what PUBLISH returned: who was listening


# --8<-- [start:subscriber]
def subscriber_app(url: str, channel: str, name: str, tally: Tally) -> RedisBroker:
    """One subscriber service: its own connection, its own SUBSCRIBE."""
    broker = RedisBroker(url, logger=None)

    @broker.subscriber(channel=channel)
    async def on_order_placed(event: OrderPlaced) -> None:
        tally.add(name, event.order_id, event.sent_at)

    return broker


# --8<-- [end:subscriber]


async def publish_batch(publisher: RedisBroker, channel: str, first: int, count: int) -> list[int]:
    # PUBLISH answers how many subscribers received the message: nobody else ever will.
    return [
        await publisher.publish(OrderPlaced(order_id=i), channel=channel)
        for i in range(first, first + count)
    ]


async def demo(url: str = REDIS_URL, count: int = 5, say: Say = print) -> PubSubResult:
    channel, tally = unique("orders"), Tally()
    redis = Redis.from_url(url)
    listening = {name: subscriber_app(url, channel, name, tally) for name in SUBSCRIBERS}
    publisher = RedisBroker(url, logger=None)
    try:
        await publisher.start()
        for app in listening.values():
            await app.start()
        await wait_until(lambda: numsub(redis, channel, 3), 10, "three subscribers")
        say(f"1. inventory, notification and analytics subscribe to channel {channel}")

        await listening.pop("analytics").stop()
        await wait_until(lambda: numsub(redis, channel, 2), 10, "analytics unsubscribed")
        say("2. analytics goes offline (its connection closes)")
        first = await publish_batch(publisher, channel, 0, count)
        say(f"3. published {count} orders; PUBLISH answered {first}: two listeners each")

        listening["analytics"] = subscriber_app(url, channel, "analytics", tally)
        await listening["analytics"].start()
        await wait_until(lambda: numsub(redis, channel, 3), 10, "analytics back")
        second = await publish_batch(publisher, channel, count, count)
        say(f"4. analytics is back; published {count} more; PUBLISH answered {second}")

        expected = {"inventory": 2 * count, "notification": 2 * count, "analytics": count}
        await wait_until(lambda: tally.reached(expected), 10, lambda: f"all of {tally.counts()}")
    finally:
        for app in (*listening.values(), publisher):
            await app.stop()
        await redis.aclose()
    lost = {name: 2 * count - tally.count(name) for name in SUBSCRIBERS}
    say(f"5. received {tally.counts()}; lost while offline: {lost}")
    return PubSubResult(tally.counts(), lost, first + second)


async def numsub(redis: Redis, channel: str, expected: int) -> bool:
    """PUBSUB NUMSUB: how many connections Redis would deliver to right now."""
    [(_, subscribers)] = await redis.pubsub_numsub(channel)
    return subscribers == expected


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--url", default=REDIS_URL, help="Redis (default: %(default)s)")
    parser.add_argument("--count", type=int, default=5, help="orders per batch")
    args = parser.parse_args()
    asyncio.run(demo(args.url, args.count))


if __name__ == "__main__":
    main()
