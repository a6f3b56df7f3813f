"""RabbitMQ labs (the reference row), in the vhost warren-labs: a queue per subscriber keeps
what an offline one missed; a quorum queue shares the work, counts deliveries and dead-letters
the poison; a dead worker's messages come back at once; a stream replays."""

from __future__ import annotations

import pytest

from labs.common import quiet
from labs.rabbitmq import pubsub, stream, work_queue

COUNT = 20


async def test_an_offline_subscriber_finds_its_messages_queued(labs_rabbit_url: str) -> None:
    result = await pubsub.demo(labs_rabbit_url, count=COUNT, say=quiet)

    assert result.received == {"analytics": 2 * COUNT, "inventory": 2 * COUNT,
                               "notification": 2 * COUNT}  # fmt: skip
    assert result.lost == {"inventory": 0, "notification": 0, "analytics": 0}


@pytest.fixture(scope="module")
async def work_run(labs_rabbit_url: str) -> work_queue.WorkQueueResult:
    return await work_queue.competing_workers(labs_rabbit_url, count=COUNT, say=quiet)


async def test_competing_consumers_split_the_jobs(work_run) -> None:
    assert sum(work_run.done.values()) == COUNT
    assert work_run.done.get("worker-1") and work_run.done.get("worker-2"), work_run.done
    assert work_run.duplicates == 0


async def test_the_poison_job_is_dead_lettered_once_past_the_delivery_limit(work_run) -> None:
    assert work_run.poison_deliveries == work_queue.DELIVERY_LIMIT + 1
    assert work_run.dead_letters == [{"order_id": COUNT, "reason": "delivery_limit"}]


async def test_a_dead_workers_unacked_jobs_go_to_the_other_at_once(labs_rabbit_url: str) -> None:
    result = await work_queue.crash_and_redeliver(labs_rabbit_url, held=3, say=quiet)

    assert result.held_by_dead_worker == 3
    assert result.redelivered_to == {"worker-1": 3}
    assert result.seconds_to_redeliver < 5  # no lease to wait out: the connection closed


async def test_a_stream_replays_to_a_reader_that_joins_late(labs_rabbit_url: str) -> None:
    result = await stream.demo(labs_rabbit_url, count=10, say=quiet)

    assert result.received["audit"] == list(range(10))
    assert result.received["analytics"] == list(range(5, 10))  # from offset 5
    assert result.received["late"] == list(range(10))  # reading removed nothing
