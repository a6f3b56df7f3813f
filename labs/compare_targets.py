"""The brokers labs/compare.py measures. Each target runs the labs' own workers on a fresh
queue (stream, topic, channel) and removes it afterwards."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from faststream.kafka import KafkaBroker
from faststream.rabbit import RabbitBroker
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from labs.common import KAFKA_BOOTSTRAP, LABS_RABBIT_URL, REDIS_URL, ChargeCard, Tally, unique
from labs.common import wait_until as wait
from labs.kafka import delete_topics, reachable
from labs.kafka import work_queue as kafka_lab
from labs.rabbitmq import work_queue as rabbit_lab
from labs.redis import pubsub as redis_pubsub_lab
from labs.redis import streams as redis_streams_lab
from labs.sqs import work_queue as sqs_lab
from labs.sqs.moto_server import client

WORKERS = ("worker-1", "worker-2")


class Target(Protocol):
    how: str
    tally: Tally

    async def start(self) -> None: ...
    async def publish(self, job: ChargeCard) -> None: ...
    async def stop(self) -> None: ...


class RabbitMQ:
    how = "quorum queue, persistent, publisher confirms; prefetch 1, `basic.ack` each"

    def __init__(self, url: str = LABS_RABBIT_URL) -> None:
        self.url, self.tally = url, Tally()
        self.queue, _, _ = rabbit_lab.work_queues(unique("bench"))
        self.apps = [rabbit_lab.worker_app(url, self.queue, w, self.tally) for w in WORKERS]
        self.publisher = RabbitBroker(url, logger=None)

    async def start(self) -> None:
        await self.publisher.start()
        for app in self.apps:
            await app.start()

    async def publish(self, job: ChargeCard) -> None:
        await self.publisher.publish(job, queue=self.queue, persist=True)

    async def stop(self) -> None:
        for app in (*self.apps, self.publisher):
            await app.stop()
        await rabbit_lab.delete(self.url, self.queue.name)


class RedisPubSub:
    how = "`PUBLISH`, one subscriber; no acknowledgement, nothing kept"

    def __init__(self, url: str = REDIS_URL) -> None:
        self.url, self.tally, self.channel = url, Tally(), unique("bench")
        self.app = redis_pubsub_lab.subscriber_app(url, self.channel, "subscriber", self.tally)
        self.publisher = RedisBroker(url, logger=None)

    async def start(self) -> None:
        await self.publisher.start()
        await self.app.start()
        redis = Redis.from_url(self.url)
        await wait(lambda: redis_pubsub_lab.numsub(redis, self.channel, 1), 10, "subscribed")
        await redis.aclose()

    async def publish(self, job: ChargeCard) -> None:
        await self.publisher.publish(job, channel=self.channel)

    async def stop(self) -> None:
        for app in (self.app, self.publisher):
            await app.stop()


class RedisStreams:
    how = "`XADD`; consumer group, `XREADGROUP` one at a time, `XACK` each"

    def __init__(self, url: str = REDIS_URL) -> None:
        self.url, self.tally, self.stream = url, Tally(), unique("bench")
        self.apps = [redis_streams_lab.worker_app(url, self.stream, w, self.tally) for w in WORKERS]
        self.publisher = RedisBroker(url, logger=None)

    async def start(self) -> None:
        await self.publisher.start()
        for app in self.apps:
            await app.start()

    async def publish(self, job: ChargeCard) -> None:
        await self.publisher.publish(job, stream=self.stream)

    async def stop(self) -> None:
        for app in (*self.apps, self.publisher):
            await app.stop()
        redis = Redis.from_url(self.url)
        await redis.delete(self.stream)
        await redis.aclose()


class SqsOnMoto:
    how = "moto (an emulator); `ReceiveMessage` (long poll, 1) and `DeleteMessage` each"

    def __init__(self, endpoint: str) -> None:
        self.sqs, self.tally = client("sqs", endpoint), Tally()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.url, self.dlq_url = sqs_lab.create_work_queue(self.sqs, unique("bench"))
        self.tasks = [
            asyncio.create_task(sqs_lab.worker(self.sqs, self.url, w, self.tally)) for w in WORKERS
        ]

    async def publish(self, job: ChargeCard) -> None:
        body = job.model_dump_json()
        await asyncio.to_thread(self.sqs.send_message, QueueUrl=self.url, MessageBody=body)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for url in (self.url, self.dlq_url):
            self.sqs.delete_queue(QueueUrl=url)


class Kafka:
    how = "2 partitions, keyed; a group of two workers; an offset commit each"

    def __init__(self, bootstrap: str = KAFKA_BOOTSTRAP) -> None:
        self.bootstrap, self.tally, self.topic = bootstrap, Tally(), unique("bench")
        self.shared: dict[str, Any] = {"log": [], "attempts": Counter(), "assigned": {}}
        self.apps = [
            kafka_lab.worker_app(bootstrap, self.topic, w, self.tally, self.shared) for w in WORKERS
        ]
        self.publisher = KafkaBroker(bootstrap, logger=None)

    async def start(self) -> None:
        await self.publisher.start()
        for app in self.apps:
            await app.start()
        one_each = lambda: sorted(map(len, self.shared["assigned"].values())) == [1, 1]  # noqa: E731
        await wait(one_each, 60, "one partition per worker")

    async def publish(self, job: ChargeCard) -> None:
        key = kafka_lab.customer(job.order_id)
        await self.publisher.publish(job, topic=self.topic, key=key)

    async def stop(self) -> None:
        for app in (*self.apps, self.publisher):
            await app.stop()
        await delete_topics(self.bootstrap, self.topic)


def targets(sqs_endpoint: str) -> dict[str, Callable[[], Target | None]]:
    """Each broker's target factory; None where the broker does not run here (Kafka)."""
    return {
        "RabbitMQ": RabbitMQ,
        "Redis Pub/Sub": RedisPubSub,
        "Redis Streams": RedisStreams,
        "SQS on moto": lambda: SqsOnMoto(sqs_endpoint),
        "Kafka": lambda: Kafka() if reachable(KAFKA_BOOTSTRAP) else None,
    }
