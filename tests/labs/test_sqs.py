"""SQS labs, on moto's server (an emulator: these are SQS's semantics, not its performance):
visibility timeout and redelivery, a redrive policy to a DLQ, FIFO groups, deduplication,
and pub/sub as SNS fanning out to a queue per subscriber."""

from __future__ import annotations

import pytest

from labs.common import quiet
from labs.sqs import fifo, pubsub, work_queue

COUNT = 20


async def test_a_message_not_deleted_comes_back_after_the_visibility_timeout(
    sqs_endpoint: str,
) -> None:
    result = await work_queue.crash_and_redeliver(sqs_endpoint, held=3, say=quiet)

    assert result.held_by_dead_worker == 3
    assert result.redelivered_to == {"worker-1": 3}
    assert result.receive_counts == [2, 2, 2]
    # Hidden for the timeout: waiting it out is the point (1 s).
    assert result.seconds_to_redeliver >= work_queue.VISIBILITY_TIMEOUT * 0.9


@pytest.fixture(scope="module")
async def work_run(sqs_endpoint: str) -> work_queue.WorkQueueResult:
    return await work_queue.competing_workers(sqs_endpoint, count=COUNT, say=quiet)


async def test_two_workers_polling_one_queue_split_the_jobs(work_run) -> None:
    assert sum(work_run.done.values()) == COUNT
    assert work_run.done.get("worker-1") and work_run.done.get("worker-2"), work_run.done
    assert work_run.duplicates == 0


async def test_the_redrive_policy_moves_the_poison_job_to_the_dlq_once(work_run) -> None:
    assert work_run.poison_deliveries == work_queue.MAX_RECEIVES
    assert [job["order_id"] for job in work_run.dead_letters] == [COUNT]


async def test_a_fifo_queue_keeps_each_groups_order_under_two_workers(sqs_endpoint: str) -> None:
    result = await fifo.ordered_groups(sqs_endpoint, groups=3, per_group=6, say=quiet)

    assert result.per_group == {f"order-{g}": list(range(6)) for g in range(3)}
    assert result.per_worker.get("worker-1") and result.per_worker.get("worker-2"), (
        f"the groups were not spread over both workers: {result.per_worker}"
    )


async def test_a_duplicate_send_within_the_window_is_dropped(sqs_endpoint: str) -> None:
    result = await fifo.deduplication(sqs_endpoint, say=quiet)

    assert result.explicit_id == 1  # two sends, one MessageDeduplicationId
    assert result.content_based == 2  # bodies 7, 7, 8: the second 7 dropped


async def test_sns_fans_out_to_a_queue_per_subscriber_that_keeps_messages(
    sqs_endpoint: str,
) -> None:
    result = await pubsub.demo(sqs_endpoint, count=COUNT, say=quiet)

    assert result.received == {"analytics": 2 * COUNT, "inventory": 2 * COUNT,
                               "notification": 2 * COUNT}  # fmt: skip
    assert result.lost["analytics"] == 0
