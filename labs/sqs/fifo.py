"""Amazon SQS FIFO queues (on moto): order per message group, and deduplication.

A FIFO queue keeps order within a message group: while a message of a group is in flight
(received, not yet deleted), no later message of that group is handed to anyone. Different
groups go to different workers at the same time. So ordering is per group (here: per order),
and parallelism is across groups.

Within a 5-minute window, a second send with the same deduplication id is accepted and
dropped: the id is explicit (MessageDeduplicationId), or, with ContentBasedDeduplication,
the SHA-256 of the body.

Run:  .venv/bin/python -m labs.sqs.fifo [--groups 3 --per-group 5]   (starts moto unless SQS_ENDPOINT)
Test: tests/labs/test_sqs.py (per-group order under two workers, deduplication)
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from labs.common import ChargeCard, Say, lab_parser, unique, wait_until
from labs.sqs.moto_server import client, sqs_endpoint
from labs.sqs.work_queue import receive


def create_fifo_queue(sqs: Any, name: str, content_based: bool = False) -> str:
    attributes = {"FifoQueue": "true", "VisibilityTimeout": "5"}
    if content_based:
        attributes["ContentBasedDeduplication"] = "true"
    return sqs.create_queue(QueueName=f"{name}.fifo", Attributes=attributes)["QueueUrl"]


# --8<-- [start:ordered-worker]
async def ordered_worker(sqs: Any, url: str, name: str, log: list[tuple[str, str, int]]) -> None:
    """Receive, handle (log it), delete: only the delete lets the group's next message out."""
    while True:
        for message in await receive(sqs, url, most=1):
            step = ChargeCard.model_validate_json(message["Body"])
            group = message["Attributes"]["MessageGroupId"]
            await asyncio.sleep(0.01)  # the work: long enough for the other worker to poll
            log.append((name, group, step.order_id))
            await asyncio.to_thread(
                sqs.delete_message, QueueUrl=url, ReceiptHandle=message["ReceiptHandle"]
            )


# --8<-- [end:ordered-worker]


@dataclass
class OrderingResult:
    per_group: dict[str, list[int]]  # the steps of each group, in the order they were handled
    per_worker: dict[str, int]  # messages each worker handled


async def ordered_groups(
    endpoint: str, groups: int = 3, per_group: int = 5, say: Say = print
) -> OrderingResult:
    """GROUPS orders of PER_GROUP steps each, sent interleaved, through two workers."""
    sqs, log = client("sqs", endpoint), []
    url = create_fifo_queue(sqs, unique("order-steps"), content_based=True)
    for step in range(per_group):
        for g in range(groups):
            body = ChargeCard(order_id=step).model_dump_json()  # order_id: the step's number
            sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=f"order-{g}")
    say(f"1. sent {per_group} steps for each of {groups} orders (message groups), interleaved")
    names = ("worker-1", "worker-2")
    workers = [asyncio.create_task(ordered_worker(sqs, url, n, log)) for n in names]
    try:
        await wait_until(
            lambda: len(log) >= groups * per_group, 20, lambda: f"every step, got {log}", workers
        )
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        sqs.delete_queue(QueueUrl=url)
    per_group_steps: dict[str, list[int]] = defaultdict(list)
    per_worker: dict[str, int] = defaultdict(int)
    for name, group, step in log:
        per_group_steps[group].append(step)
        per_worker[name] += 1
    say(f"2. handled, per group, in this order: {dict(sorted(per_group_steps.items()))}")
    say(f"3. by both workers at once: {dict(sorted(per_worker.items()))}")
    return OrderingResult(dict(per_group_steps), dict(per_worker))


@dataclass
class DedupResult:
    explicit_id: int  # messages in the queue after two sends with one MessageDeduplicationId
    content_based: int  # after two sends of one body, and one of another body


async def deduplication(endpoint: str, say: Say = print) -> DedupResult:
    sqs = client("sqs", endpoint)
    explicit = create_fifo_queue(sqs, unique("charges"))
    by_content = create_fifo_queue(sqs, unique("charges"), content_based=True)
    try:
        body = ChargeCard(order_id=7).model_dump_json()
        for _ in range(2):  # a producer's retry after a lost reply, say
            sqs.send_message(
                QueueUrl=explicit, MessageBody=body, MessageGroupId="order-7",
                MessageDeduplicationId="charge-order-7",
            )  # fmt: skip
        say("1. sent the same job twice with MessageDeduplicationId=charge-order-7")
        for order_id in (7, 7, 8):
            body = ChargeCard(order_id=order_id, sent_at=0).model_dump_json()
            sqs.send_message(QueueUrl=by_content, MessageBody=body, MessageGroupId="charges")
        say("2. sent bodies for orders 7, 7, 8 to a queue with ContentBasedDeduplication")
        result = DedupResult(await drain(sqs, explicit), await drain(sqs, by_content))
        say(f"3. in the queues: {result.explicit_id} and {result.content_based} messages")
        return result
    finally:
        for url in (explicit, by_content):
            sqs.delete_queue(QueueUrl=url)


async def drain(sqs: Any, url: str) -> int:
    """Receive (and delete) until a receive comes back empty; count what came. The sends
    are done, so what is in the queue is visible now: no need to wait for more."""
    count = 0
    while messages := await receive(sqs, url, most=10, wait=0):
        count += len(messages)
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return count


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--groups", type=int, default=3, help="orders (message groups)")
    parser.add_argument("--per-group", type=int, default=5, help="steps per order")
    args = parser.parse_args()
    with sqs_endpoint() as endpoint:
        print("== per-group order under two workers")
        asyncio.run(ordered_groups(endpoint, args.groups, args.per_group))
        print("== deduplication within the 5-minute window")
        asyncio.run(deduplication(endpoint))


if __name__ == "__main__":
    main()
