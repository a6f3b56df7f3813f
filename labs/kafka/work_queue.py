"""Kafka work queue: one consumer group, partitions shared out, keys for order, a dead-letter topic.

The work is split by partition, not by message: the group `payment` gives each of its two
workers one of the topic's two partitions, and a worker reads its partition in order. A key
(here the customer) always hashes to the same partition, so one customer's jobs are handled
in the order they were published, while the two partitions run in parallel. The "ack" is
the committed offset: one number per partition, everything before it is done.

Kafka keeps no per-message delivery count and has no dead-letter queue. The worker retries
the poison job in place (nack seeks back to its offset; the jobs behind it on that partition
wait), counts the attempts itself, and at MAX_ATTEMPTS publishes it to `<topic>.dlt` and
commits past it. A worker that leaves without committing gives its partition to the other,
which reads again from the last committed offset.

Run:  .venv/bin/python -m labs.kafka.work_queue [--count 20]   (KAFKA_BOOTSTRAP, default localhost:9092)
Test: tests/labs/test_kafka.py (skipped where no Kafka answers)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage, Topic

from labs.common import (
    KAFKA_BOOTSTRAP,
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
from labs.kafka import create_topic, delete_topics

PARTITIONS = 2
MAX_ATTEMPTS = 3  # the poison job: tried three times, then published to <topic>.dlt
CUSTOMERS = 4  # the key: a customer's jobs stay in order


class Assignment(ConsumerRebalanceListener):
    """Records which partitions the group gave this worker."""

    def __init__(self, name: str, assigned: dict[str, set[int]]) -> None:
        self.name, self.assigned = name, assigned

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.assigned[self.name] = set()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned[self.name] = {tp.partition for tp in assigned}


# --8<-- [start:worker]
def worker_app(bootstrap: str, topic: str, name: str, tally: Tally, shared: dict) -> KafkaBroker:
    """One worker of group `payment`. `shared` holds the log of handled jobs, the attempts
    (Kafka counts none) and the assignments, for the demo to read."""
    broker = KafkaBroker(bootstrap, logger=None)
    source = Topic(topic, num_partitions=PARTITIONS)
    listener = Assignment(name, shared["assigned"])

    @broker.subscriber(source, group_id=f"{topic}.payment", auto_offset_reset="earliest",
                       ack_policy=AckPolicy.MANUAL, listener=listener)  # fmt: skip
    async def on_charge_card(job: ChargeCard, msg: KafkaMessage) -> None:
        record = msg.raw_message
        try:
            charge(job)
        except CardDeclinedForever as exc:
            tally.add("failed", job.order_id)
            shared["attempts"][(record.partition, record.offset)] += 1
            if shared["attempts"][(record.partition, record.offset)] < MAX_ATTEMPTS:
                await msg.nack()  # seek back: this record again; its partition waits
                return
            await broker.publish(job, topic=f"{topic}.dlt", key=record.key,
                                 headers={"error": str(exc), "attempts": str(MAX_ATTEMPTS)})  # fmt: skip
            await msg.ack()  # commit past it
            return
        tally.add(name, job.order_id, job.sent_at)
        shared["log"].append((record.key.decode(), job.order_id))
        await msg.ack()  # commit the offset

    return broker


# --8<-- [end:worker]


def dead_letter_reader(bootstrap: str, topic: str, seen: list[dict[str, Any]]) -> KafkaBroker:
    broker = KafkaBroker(bootstrap, logger=None)

    @broker.subscriber(f"{topic}.dlt", group_id=f"{topic}.dlt-reader", auto_offset_reset="earliest")
    async def on_dead_letter(job: ChargeCard, msg: KafkaMessage) -> None:
        seen.append({"order_id": job.order_id, "attempts": msg.headers.get("attempts")})

    return broker


@dataclass
class WorkQueueResult:
    done: dict[str, int]  # jobs charged, per worker
    duplicates: int
    poison_deliveries: int
    dead_letters: list[dict[str, Any]]
    per_key: dict[str, list[int]]  # each customer's order ids, in the order handled


async def competing_workers(
    bootstrap: str = KAFKA_BOOTSTRAP, count: int = 20, say: Say = print
) -> WorkQueueResult:
    topic, tally, dead = unique("charges"), Tally(), []
    shared: dict[str, Any] = {"log": [], "attempts": Counter(), "assigned": {}}
    apps = [worker_app(bootstrap, topic, n, tally, shared) for n in ("worker-1", "worker-2")]
    try:
        for app in apps:
            await app.start()
        one_each = lambda: sorted(map(len, shared["assigned"].values())) == [1, 1]  # noqa: E731
        await wait_until(one_each, 60, "one partition per worker")
        say(f"1. group payment: {shared['assigned']} (partitions of {topic})")
        apps.append(dead_letter_reader(bootstrap, topic, dead))
        await apps[-1].start()
        for i in range(count):
            await apps[0].publish(ChargeCard(order_id=i), topic=topic, key=customer(i))
        await apps[0].publish(ChargeCard(order_id=count, card=POISON_CARD), topic=topic,
                              key=customer(count))  # fmt: skip
        say(f"2. published {count} jobs keyed by customer, and one whose card always fails")
        workers = ("worker-1", "worker-2")
        await wait_until(lambda: sum(map(tally.count, workers)) >= count, 60, "the good jobs")
        say(f"3. charged and committed: { {w: tally.count(w) for w in workers} }")
        await wait_until(lambda: bool(dead), 60, "a dead letter")
        failed = len(tally.seen.pop("failed", []))
        per_key: dict[str, list[int]] = defaultdict(list)
        for key, order_id in shared["log"]:
            per_key[key].append(order_id)
        say(f"4. each customer's jobs, in the order handled: {dict(sorted(per_key.items()))}")
        say(f"5. the poison job: {failed} attempts, then {topic}.dlt: {dead}")
        return WorkQueueResult(tally.counts(), tally.duplicates(), failed, dead, dict(per_key))
    finally:
        for app in apps:
            await app.stop()
        await delete_topics(bootstrap, topic, f"{topic}.dlt")


def customer(order_id: int) -> bytes:
    return f"customer-{order_id % CUSTOMERS}".encode()


@dataclass
class CrashResult:
    held_by_dead_worker: int
    redelivered_to: dict[str, int]
    seconds_to_redeliver: float


async def crash_and_reread(bootstrap: str = KAFKA_BOOTSTRAP, held: int = 3, say: Say = print):
    """A worker reads HELD jobs and leaves without committing; worker-1 reads them again."""
    topic, tally = unique("charges"), Tally()
    shared: dict[str, Any] = {"log": [], "attempts": Counter(), "assigned": {}}
    worker = worker_app(bootstrap, topic, "worker-1", tally, shared)
    doomed = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{topic}.payment",
                              enable_auto_commit=False, auto_offset_reset="earliest")  # fmt: skip
    try:
        await create_topic(bootstrap, topic, PARTITIONS)
        await worker.connect()
        for i in range(held):
            await worker.publish(ChargeCard(order_id=i), topic=topic, key=customer(i))
        await doomed.start()
        got, deadline = 0, time.monotonic() + 30
        while got < held and time.monotonic() < deadline:
            taken = await doomed.getmany(timeout_ms=1000, max_records=held - got)
            got += sum(len(records) for records in taken.values())
        say(f"1. worker-2 reads {got} jobs and goes away without committing an offset")
        await doomed.stop()
        gone = time.monotonic()
        await worker.start()
        await wait_until(lambda: tally.count("worker-1") >= held, 60, "the re-read")
        took = time.monotonic() - gone
        say(f"2. after {took:.1f} s worker-1 owns the partition and has charged them again")
        return CrashResult(got, tally.counts(), took)
    finally:
        await worker.stop()
        await delete_topics(bootstrap, topic)


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--bootstrap", default=KAFKA_BOOTSTRAP, help="default: %(default)s")
    parser.add_argument("--count", type=int, default=20, help="good jobs")
    args = parser.parse_args()
    print("== two workers in one group, one poison job")
    asyncio.run(competing_workers(args.bootstrap, args.count))
    print("== a worker leaves without committing")
    asyncio.run(crash_and_reread(args.bootstrap))


if __name__ == "__main__":
    main()
