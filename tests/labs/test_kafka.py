"""Kafka labs: run only where a broker answers on KAFKA_BOOTSTRAP (default localhost:9092);
elsewhere every test here is skipped, with the command that starts one
(labs/kafka/docker-compose.yml)."""

from __future__ import annotations

from labs.common import quiet
from labs.kafka import pubsub, work_queue

COUNT = 20


async def test_kafka_groups_each_read_everything_and_a_new_group_replays(
    kafka_bootstrap: str,
) -> None:
    result = await pubsub.demo(kafka_bootstrap, count=COUNT, say=quiet)

    assert result.received == {"analytics": 2 * COUNT, "audit": 2 * COUNT,
                               "inventory": 2 * COUNT, "notification": 2 * COUNT}  # fmt: skip
    assert result.lost["analytics"] == 0


async def test_kafka_workers_split_partitions_keep_key_order_and_dead_letter_the_poison(
    kafka_bootstrap: str,
) -> None:
    result = await work_queue.competing_workers(kafka_bootstrap, count=COUNT, say=quiet)

    assert sum(result.done.values()) == COUNT
    assert result.done.get("worker-1") and result.done.get("worker-2"), result.done
    assert result.duplicates == 0
    for customer, order_ids in result.per_key.items():
        assert order_ids == sorted(order_ids), f"{customer} out of order: {order_ids}"
    assert result.poison_deliveries == work_queue.MAX_ATTEMPTS
    assert [d["order_id"] for d in result.dead_letters] == [COUNT]


async def test_kafka_jobs_read_without_a_commit_are_read_again(kafka_bootstrap: str) -> None:
    result = await work_queue.crash_and_reread(kafka_bootstrap, held=3, say=quiet)

    assert result.held_by_dead_worker == 3
    assert result.redelivered_to == {"worker-1": 3}
