"""Amazon SNS -> SQS pub/sub (on moto): a topic, one queue per subscriber; offline loses nothing.

SQS alone is a work queue: each message goes to one consumer. Pub/sub on AWS is SNS fanning
out to one SQS queue per subscriber, which is RabbitMQ's exchange-and-queues shape: while
analytics is offline, its queue keeps its copies (for the queue's retention period, 4 days by
default). RawMessageDelivery hands the queue the published body itself, not an SNS envelope.
On real AWS each queue also needs a policy that lets the topic send to it; moto checks none.

Run:  .venv/bin/python -m labs.sqs.pubsub [--count 5]   (starts moto unless SQS_ENDPOINT)
Test: tests/labs/test_sqs.py::test_sns_fans_out_to_a_queue_per_subscriber_that_keeps_messages
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from labs.common import OrderPlaced, Say, Tally, lab_parser, unique, wait_until
from labs.sqs.moto_server import client, sqs_endpoint
from labs.sqs.work_queue import receive

SUBSCRIBERS = ("inventory", "notification", "analytics")


# --8<-- [start:subscribe]
def subscribe_queue(sqs: Any, sns: Any, topic_arn: str, name: str) -> str:
    """A subscriber's own queue, subscribed to the topic; returns the queue's URL."""
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=arn["Attributes"]["QueueArn"],
        Attributes={"RawMessageDelivery": "true"},
    )
    return url


# --8<-- [end:subscribe]


async def subscriber(sqs: Any, url: str, name: str, tally: Tally, stopping: set[str]) -> None:
    """Poll, record, delete; a shutdown finishes the receive in progress first."""
    while name not in stopping:
        for message in await receive(sqs, url, most=10):
            event = OrderPlaced.model_validate_json(message["Body"])
            tally.add(name, event.order_id, event.sent_at)
            await asyncio.to_thread(
                sqs.delete_message, QueueUrl=url, ReceiptHandle=message["ReceiptHandle"]
            )


@dataclass
class PubSubResult:
    received: dict[str, int]
    lost: dict[str, int]


async def demo(endpoint: str, count: int = 5, say: Say = print) -> PubSubResult:
    sqs, sns, tally = client("sqs", endpoint), client("sns", endpoint), Tally()
    topic = sns.create_topic(Name=unique("orders"))["TopicArn"]
    prefix = topic.rsplit(":", 1)[1]
    queues = {name: subscribe_queue(sqs, sns, topic, f"{prefix}-{name}") for name in SUBSCRIBERS}
    stopping: set[str] = set()
    running = {
        name: asyncio.create_task(subscriber(sqs, url, name, tally, stopping))
        for name, url in queues.items()
    }
    try:
        say(f"1. inventory, notification and analytics each subscribe a queue to {prefix}")
        stopping.add("analytics")
        await running.pop("analytics")
        say("2. analytics goes offline (nobody polls its queue)")
        for i in range(count):
            sns.publish(TopicArn=topic, Message=OrderPlaced(order_id=i).model_dump_json())
        say(f"3. published {count} orders to the topic")
        stopping.clear()
        running["analytics"] = asyncio.create_task(
            subscriber(sqs, queues["analytics"], "analytics", tally, stopping)
        )
        for i in range(count, 2 * count):
            sns.publish(TopicArn=topic, Message=OrderPlaced(order_id=i).model_dump_json())
        say(f"4. analytics is back; published {count} more")
        expected = dict.fromkeys(SUBSCRIBERS, 2 * count)
        await wait_until(
            lambda: tally.reached(expected),
            20,
            lambda: f"all of {tally.counts()}",
            running.values(),
        )
    finally:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        for url in queues.values():
            sqs.delete_queue(QueueUrl=url)
        sns.delete_topic(TopicArn=topic)
    lost = {name: 2 * count - tally.count(name) for name in SUBSCRIBERS}
    say(f"5. received {tally.counts()}; lost while offline: {lost}")
    return PubSubResult(tally.counts(), lost)


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--count", type=int, default=5, help="orders per batch")
    args = parser.parse_args()
    with sqs_endpoint() as endpoint:
        asyncio.run(demo(endpoint, args.count))


if __name__ == "__main__":
    main()
