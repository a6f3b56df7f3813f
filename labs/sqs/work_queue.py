"""Amazon SQS work queue (on moto): visibility timeout, redelivery, and a redrive to a DLQ.

FastStream 0.7 has no SQS broker (it speaks RabbitMQ, Kafka, NATS, Redis and MQTT), so this
lab calls boto3 itself; each blocking call runs in a thread, so two workers can poll at once.

SQS has no acknowledgement and no consumer it could see die. ReceiveMessage hides a message
for the queue's visibility timeout; DeleteMessage is the "ack". A message not deleted in time
becomes visible again and goes to whoever polls next, its ApproximateReceiveCount one higher.
The redrive policy moves it to the dead-letter queue when a receive would exceed
maxReceiveCount. Two workers poll one queue; the poison job is received MAX_RECEIVES times,
then moved to `<queue>-dlq`.

Run:  .venv/bin/python -m labs.sqs.work_queue [--count 20]   (starts moto unless SQS_ENDPOINT)
Test: tests/labs/test_sqs.py (visibility timeout, competing workers, redrive)
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from labs.common import (
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
from labs.sqs.moto_server import client, sqs_endpoint

VISIBILITY_TIMEOUT = 1  # seconds a received message stays hidden (the "lease")
MAX_RECEIVES = 3  # the poison job: received three times, then moved to the DLQ


# --8<-- [start:queues]
def create_work_queue(sqs: Any, name: str) -> tuple[str, str]:
    """The work queue and its dead-letter queue; returns both URLs."""
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    redrive = {
        "deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"],
        "maxReceiveCount": str(MAX_RECEIVES),
    }
    attributes = {
        "VisibilityTimeout": str(VISIBILITY_TIMEOUT),
        "RedrivePolicy": json.dumps(redrive),
    }
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return url, dlq_url


# --8<-- [end:queues]


async def receive(sqs: Any, url: str, most: int = 1, wait: int = 1) -> list[dict[str, Any]]:
    reply = await asyncio.to_thread(
        sqs.receive_message,
        QueueUrl=url,
        MaxNumberOfMessages=most,
        WaitTimeSeconds=wait,
        MessageSystemAttributeNames=["All"],
    )
    return reply.get("Messages", [])


# --8<-- [start:worker]
async def worker(sqs: Any, url: str, name: str, tally: Tally) -> None:
    """Poll, charge, delete. A job that fails is not deleted: it comes back after the timeout."""
    while True:
        for message in await receive(sqs, url):
            job = ChargeCard.model_validate_json(message["Body"])
            try:
                charge(job)
            except CardDeclinedForever:
                tally.add("failed", job.order_id)
                continue  # no DeleteMessage: visible again in VISIBILITY_TIMEOUT
            tally.add(name, job.order_id, job.sent_at)
            await asyncio.to_thread(
                sqs.delete_message, QueueUrl=url, ReceiptHandle=message["ReceiptHandle"]
            )


# --8<-- [end:worker]


@dataclass
class WorkQueueResult:
    done: dict[str, int]  # jobs charged, per worker
    duplicates: int  # jobs charged twice
    poison_deliveries: int  # how often the poison job was received (and failed)
    dead_letters: list[dict[str, Any]]  # the jobs that reached the DLQ


async def competing_workers(endpoint: str, count: int = 20, say: Say = print) -> WorkQueueResult:
    """COUNT good jobs and one poison job through two workers."""
    sqs, tally = client("sqs", endpoint), Tally()
    url, dlq_url = create_work_queue(sqs, unique("charges"))
    workers = [asyncio.create_task(worker(sqs, url, n, tally)) for n in ("worker-1", "worker-2")]
    try:
        say(f"1. worker-1 and worker-2 poll {url} (visibility timeout {VISIBILITY_TIMEOUT} s)")
        for i in range(count):
            sqs.send_message(QueueUrl=url, MessageBody=ChargeCard(order_id=i).model_dump_json())
        poison = ChargeCard(order_id=count, card=POISON_CARD)
        sqs.send_message(QueueUrl=url, MessageBody=poison.model_dump_json())
        say(f"2. sent {count} jobs and one whose card always fails")
        names = ("worker-1", "worker-2")
        await wait_until(lambda: sum(map(tally.count, names)) >= count, 20, "the jobs", workers)
        say(f"3. charged and deleted: { {w: tally.count(w) for w in names} }")
        dead = await wait_for_dead_letters(sqs, dlq_url)
        failed = len(tally.seen.pop("failed", []))
        orders = [job["order_id"] for job in dead]
        say(f"4. the poison job: received {failed} times, then moved to the DLQ: orders {orders}")
        return WorkQueueResult(tally.counts(), tally.duplicates(), failed, dead)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for queue in (url, dlq_url):
            sqs.delete_queue(QueueUrl=queue)


async def wait_for_dead_letters(sqs: Any, dlq_url: str) -> list[dict[str, Any]]:
    dead: list[dict[str, Any]] = []

    async def arrived() -> bool:
        dead.extend(json.loads(m["Body"]) for m in await receive(sqs, dlq_url, most=10, wait=0))
        return bool(dead)

    await wait_until(arrived, 20, "the dead letter")
    await arrived()  # a second copy, had there been one, is counted too
    return dead


@dataclass
class TimeoutResult:
    held_by_dead_worker: int
    redelivered_to: dict[str, int]
    seconds_to_redeliver: float  # from the dead worker's receive to the last redelivery
    receive_counts: list[int]  # ApproximateReceiveCount of the redeliveries


async def crash_and_redeliver(endpoint: str, held: int = 3, say: Say = print) -> TimeoutResult:
    """A worker receives HELD jobs and dies; they reappear after the visibility timeout."""
    sqs, tally = client("sqs", endpoint), Tally()
    url, dlq_url = create_work_queue(sqs, unique("charges"))
    try:
        for i in range(held):
            sqs.send_message(QueueUrl=url, MessageBody=ChargeCard(order_id=i).model_dump_json())
        taken = await receive(sqs, url, most=held)
        died = time.monotonic()
        say(f"1. worker-2 receives {len(taken)} jobs and is killed before DeleteMessage")
        counts: list[int] = []
        while len(counts) < held:
            for message in await receive(sqs, url, most=held):
                counts.append(int(message["Attributes"]["ApproximateReceiveCount"]))
                tally.add("worker-1", ChargeCard.model_validate_json(message["Body"]).order_id)
            if time.monotonic() - died > 10:
                break
        took = time.monotonic() - died
        say(
            f"2. hidden for the visibility timeout ({VISIBILITY_TIMEOUT} s), then worker-1 "
            f"receives them after {took:.1f} s, receive counts {counts}"
        )
        return TimeoutResult(len(taken), tally.counts(), took, counts)
    finally:
        for queue in (url, dlq_url):
            sqs.delete_queue(QueueUrl=queue)


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--count", type=int, default=20, help="good jobs")
    args = parser.parse_args()
    with sqs_endpoint() as endpoint:
        print("== two competing workers, one poison job")
        asyncio.run(competing_workers(endpoint, args.count))
        print("== a worker dies holding jobs")
        asyncio.run(crash_and_redeliver(endpoint))


if __name__ == "__main__":
    main()
