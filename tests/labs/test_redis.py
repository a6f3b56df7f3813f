"""Redis labs, on the machine's Redis: Pub/Sub keeps nothing for an absent subscriber;
Streams with a consumer group share the work, claim an abandoned job, dead-letter the poison."""

from __future__ import annotations

import pytest

from labs.common import quiet
from labs.redis import pubsub, streams

COUNT = 20


async def test_every_online_pubsub_subscriber_gets_every_message(redis_url: str) -> None:
    result = await pubsub.demo(redis_url, count=COUNT, say=quiet)

    assert result.received["inventory"] == 2 * COUNT
    assert result.received["notification"] == 2 * COUNT
    assert result.lost["inventory"] == result.lost["notification"] == 0


async def test_an_offline_pubsub_subscriber_loses_what_was_published(redis_url: str) -> None:
    result = await pubsub.demo(redis_url, count=COUNT, say=quiet)

    assert result.received["analytics"] == COUNT  # the second batch only
    assert result.lost["analytics"] == COUNT
    # PUBLISH said so itself: two listeners for the first batch, three for the second.
    assert result.listeners_per_publish == [2] * COUNT + [3] * COUNT


@pytest.fixture(scope="module")
async def stream_run(redis_url: str) -> streams.WorkQueueResult:
    return await streams.competing_workers(redis_url, count=COUNT, say=quiet)


async def test_competing_stream_consumers_split_the_jobs_and_ack_each(stream_run) -> None:
    workers = {w: stream_run.done.get(w, 0) for w in ("worker-1", "worker-2")}

    assert sum(stream_run.done.values()) == COUNT
    assert all(workers.values()), f"one worker did all the work: {stream_run.done}"
    assert stream_run.duplicates == 0
    assert stream_run.pending == 0  # every entry XACKed (the poison's by the dead-lettering)


async def test_the_poison_job_is_dead_lettered_once_after_three_deliveries(stream_run) -> None:
    assert stream_run.poison_deliveries == streams.MAX_DELIVERIES
    [dead] = stream_run.dead_letters
    assert '"order_id":20' in dead["body"]
    assert dead["deliveries"] == str(streams.MAX_DELIVERIES)  # XPENDING's delivery counter


async def test_jobs_of_a_worker_killed_before_xack_are_claimed_after_min_idle(
    redis_url: str,
) -> None:
    result = await streams.crash_and_claim(redis_url, held=3, say=quiet)

    assert result.held_by_dead_worker == 3
    assert result.claimed_by == {"rescuer": 3}
    assert result.seconds_to_claim >= streams.MIN_IDLE_MS / 1000
    assert result.pending_after == 0
