"""RabbitMQ work queue: a quorum queue, two competing workers, a delivery limit and a DLX.

Two workers consume one quorum queue with a prefetch of 1: each message goes to one of them
and stays unacknowledged until its worker acks it. The poison job is nacked with requeue;
the quorum queue counts its deliveries (the `x-delivery-count` header) and, past
`x-delivery-limit`, dead-letters it through the dead-letter exchange into `<queue>.dlq`,
with the reason in its `x-death` header. A worker that dies holding messages (its connection
closes) gives them back at once: the other worker gets them, no timer to wait out.

Run:  .venv/bin/python -m labs.rabbitmq.work_queue [--count 20]   (vhost warren-labs)
Test: tests/labs/test_rabbitmq.py (competing consumers, redelivery after a crash, dead letters)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aio_pika
from faststream import AckPolicy
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitMessage,
    RabbitQueue,
)

from labs.common import (
    LABS_RABBIT_URL,
    POISON_CARD,
    CardDeclinedForever,
    ChargeCard,
    Say,
    Tally,
    charge,
    lab_parser,
    unique,
    wait_until,
)
from labs.rabbitmq import check_vhost, declare

DELIVERY_LIMIT = 2  # requeued twice; the third failure dead-letters it: three deliveries


# --8<-- [start:queues]
def work_queues(name: str) -> tuple[RabbitQueue, RabbitExchange, RabbitQueue]:
    """The work queue, and where its dead letters go: a direct exchange and `<name>.dlq`."""
    dead = RabbitExchange(f"{name}.dead", type=ExchangeType.DIRECT, durable=True)
    dlq = RabbitQueue(f"{name}.dlq", durable=True, routing_key=name)
    arguments = {
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": dead.name,
        "x-dead-letter-routing-key": name,
    }
    queue = RabbitQueue(name, queue_type=QueueType.QUORUM, durable=True, arguments=arguments)
    return queue, dead, dlq


# --8<-- [end:queues]


# --8<-- [start:worker]
def worker_app(url: str, queue: RabbitQueue, name: str, tally: Tally) -> RabbitBroker:
    """One worker: prefetch 1, acks after the work, nacks (requeue) when it fails."""
    broker = RabbitBroker(url, logger=None, default_channel=Channel(prefetch_count=1))

    @broker.subscriber(queue, ack_policy=AckPolicy.MANUAL)
    async def on_charge_card(job: ChargeCard, msg: RabbitMessage) -> None:
        try:
            charge(job)
        except CardDeclinedForever:
            tally.add("failed", job.order_id)
            await msg.nack(requeue=True)  # the quorum queue counts it: x-delivery-count
            return
        tally.add(name, job.order_id, job.sent_at)
        await msg.ack()

    return broker


# --8<-- [end:worker]


def dead_letter_reader(url: str, dead: RabbitExchange, dlq: RabbitQueue, seen: list) -> Any:
    broker = RabbitBroker(url, logger=None)

    @broker.subscriber(dlq, dead)
    async def on_dead_letter(job: ChargeCard, msg: RabbitMessage) -> None:
        [death] = msg.headers["x-death"]
        seen.append({"order_id": job.order_id, "reason": death["reason"]})

    return broker


@dataclass
class WorkQueueResult:
    done: dict[str, int]  # jobs charged, per worker
    duplicates: int  # jobs charged twice
    poison_deliveries: int  # how often the poison job was handed out (and failed)
    dead_letters: list[dict[str, Any]]  # what reached <queue>.dlq


async def competing_workers(
    url: str = LABS_RABBIT_URL, count: int = 20, say: Say = print
) -> WorkQueueResult:
    """COUNT good jobs and one poison job through two workers."""
    queue, dead, dlq = work_queues(unique("charges"))
    tally, dead_letters = Tally(), []
    apps = [worker_app(url, queue, name, tally) for name in ("worker-1", "worker-2")]
    apps.append(dead_letter_reader(url, dead, dlq, dead_letters))
    try:
        for app in apps:
            await app.start()
        say(f"1. worker-1 and worker-2 consume quorum queue {queue.name} (prefetch 1)")
        for i in range(count):
            await apps[0].publish(ChargeCard(order_id=i), queue=queue, persist=True)
        await apps[0].publish(ChargeCard(order_id=count, card=POISON_CARD), queue=queue)
        say(f"2. published {count} jobs and one whose card always fails")
        workers = ("worker-1", "worker-2")
        await wait_until(lambda: sum(map(tally.count, workers)) >= count, 10, "the good jobs")
        say(f"3. charged and acked: { {w: tally.count(w) for w in workers} }")
        await wait_until(lambda: bool(dead_letters), 10, "a dead letter")
        failed = len(tally.seen.pop("failed", []))
        say(f"4. the poison job: {failed} deliveries, then {dlq.name}: {dead_letters}")
        return WorkQueueResult(tally.counts(), tally.duplicates(), failed, dead_letters)
    finally:
        for app in apps:
            await app.stop()
        await delete(url, queue.name, dlq.name, exchange=dead.name)


@dataclass
class CrashResult:
    held_by_dead_worker: int
    redelivered_to: dict[str, int]
    seconds_to_redeliver: float  # from the connection's close to the last ack


async def crash_and_redeliver(url: str = LABS_RABBIT_URL, held: int = 3, say: Say = print):
    """A worker takes HELD jobs and dies before acking; worker-1 gets them at once."""
    queue, _, _ = work_queues(unique("charges"))
    tally = Tally()
    worker = worker_app(url, queue, "worker-1", tally)
    try:
        await worker.connect()
        await declare(worker, queue)
        for i in range(held):
            await worker.publish(ChargeCard(order_id=i), queue=queue, persist=True)
        doomed = await aio_pika.connect(url)
        channel = await doomed.channel()
        source = await channel.get_queue(queue.name)
        taken = [await source.get(no_ack=False) for _ in range(held)]
        say(f"1. worker-2 takes {len(taken)} jobs (unacked) and is killed: its connection drops")
        await doomed.close()
        died = time.monotonic()
        await worker.start()
        await wait_until(lambda: tally.count("worker-1") >= held, 10, "the redelivery")
        took = time.monotonic() - died
        say(f"2. after {took:.2f} s worker-1 has charged them: {tally.counts()}")
        return CrashResult(len(taken), tally.counts(), took)
    finally:
        await worker.stop()
        await delete(url, queue.name)


async def delete(url: str, *queues: str, exchange: str | None = None) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in queues:
            await channel.queue_delete(name)
        if exchange:
            await channel.exchange_delete(exchange)


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--url", default=LABS_RABBIT_URL, help="RabbitMQ (default: %(default)s)")
    parser.add_argument("--count", type=int, default=20, help="good jobs")
    args = parser.parse_args()
    asyncio.run(check_vhost(args.url))
    print("== two competing workers, one poison job")
    asyncio.run(competing_workers(args.url, args.count))
    print("== a worker dies holding jobs")
    asyncio.run(crash_and_redeliver(args.url))


if __name__ == "__main__":
    main()
