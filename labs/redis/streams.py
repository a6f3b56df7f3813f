"""Redis Streams: a work queue with a consumer group, XACK, claiming, and a dead-letter stream.

Two workers read one stream in the consumer group `payment`: XREADGROUP gives each entry to
one of them, and the entry stays in the group's pending list (PEL) until its worker XACKs it.
Nothing redelivers a pending entry by itself: a third consumer, the rescuer, runs XAUTOCLAIM
to take entries idle for MIN_IDLE_MS, from a worker that died or from a failed attempt. Each
claim adds one to the entry's delivery counter (XPENDING shows it); the poison job is moved
to the dead-letter stream `<stream>:dead` at its MAX_DELIVERIES-th delivery, by a script
that XACKs and XADDs as one step, so exactly one copy lands there.

Run:  .venv/bin/python -m labs.redis.streams [--count 20]
Test: tests/labs/test_redis.py (competing consumers, claim after a crash, dead letters)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import Redis, RedisStreamMessage
from redis.asyncio import Redis as RedisClient

from labs.common import (
    POISON_CARD,
    REDIS_URL,
    CardDeclinedForever,
    ChargeCard,
    Say,
    Tally,
    charge,
    lab_parser,
    unique,
    wait_until,
)

GROUP = "payment"
MIN_IDLE_MS = 500  # a pending entry idle this long is presumed abandoned
MAX_DELIVERIES = 3  # the poison job: delivered three times, then dead-lettered

# --8<-- [start:dead-letter]
# XACK and XADD in one atomic step, and only if the entry was still pending: a second worker
# holding the same entry (claimed from under it) finds it acked and adds no second copy.
DEAD_LETTER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
return false
"""


async def dead_letter(redis: RedisClient, msg: RedisStreamMessage, why: str) -> None:
    stream, [entry_id] = msg.raw_message["channel"], msg.raw_message["message_ids"]
    deliveries = await msg.get_delivery_count()
    fields = ["body", msg.body, "entry", entry_id, "deliveries", deliveries, "error", why]
    await redis.eval(DEAD_LETTER, 2, stream, f"{stream}:dead", GROUP, entry_id, *fields)


# --8<-- [end:dead-letter]


# --8<-- [start:worker]
def worker_app(
    url: str, stream: str, consumer: str, tally: Tally, claim_idle_ms: int | None = None
) -> RedisBroker:
    """One worker in the group. With `claim_idle_ms` it is the rescuer: it reads nothing new,
    it XAUTOCLAIMs entries that other consumers (or its own failed attempts) left pending."""
    broker = RedisBroker(url, logger=None)
    read = StreamSub(
        stream, group=GROUP, consumer=consumer, max_records=1, min_idle_time=claim_idle_ms
    )

    @broker.subscriber(stream=read, ack_policy=AckPolicy.MANUAL)
    async def on_charge_card(job: ChargeCard, msg: RedisStreamMessage, redis: Redis) -> None:
        try:
            charge(job)
        except CardDeclinedForever as exc:
            tally.add("failed", job.order_id)
            if await msg.get_delivery_count() >= MAX_DELIVERIES:
                await dead_letter(redis, msg, str(exc))
            return  # no XACK: the entry stays pending, and the rescuer claims it
        tally.add(consumer, job.order_id, job.sent_at)
        await msg.ack()  # XACK

    return broker


# --8<-- [end:worker]


@dataclass
class WorkQueueResult:
    done: dict[str, int]  # jobs charged, per worker
    duplicates: int  # jobs charged twice
    poison_deliveries: int  # how often the poison job was handed out (and failed)
    dead_letters: list[dict[str, str]]  # the dead-letter stream's entries
    pending: int  # entries the group still waits an XACK for


async def competing_workers(url: str = REDIS_URL, count: int = 20, say: Say = print):
    """COUNT good jobs and one poison job through two workers and the rescuer."""
    stream, tally = unique("charges"), Tally()
    apps = [worker_app(url, stream, name, tally) for name in ("worker-1", "worker-2")]
    apps.append(worker_app(url, stream, "rescuer", tally, claim_idle_ms=MIN_IDLE_MS))
    redis = RedisClient.from_url(url)
    try:
        for app in apps:
            await app.start()  # XGROUP CREATE payment (once), then each one reads
        say(f"1. worker-1, worker-2 and the rescuer join group {GROUP} on stream {stream}")
        for i in range(count):
            await apps[0].publish(ChargeCard(order_id=i), stream=stream)  # XADD
        await apps[0].publish(ChargeCard(order_id=count, card=POISON_CARD), stream=stream)
        say(f"2. XADD {count} jobs and one whose card always fails")
        workers = ("worker-1", "worker-2", "rescuer")
        await wait_until(lambda: sum(map(tally.count, workers)) >= count, 10, "the good jobs")
        say(f"3. charged and XACKed: { {w: tally.count(w) for w in workers} }")
        took = await wait_until(lambda: redis.xlen(f"{stream}:dead"), 10, "a dead letter")
        result = await outcome(redis, stream, tally)
        say(f"4. the poison job: {result.poison_deliveries} deliveries, then {stream}:dead")
        for dead in result.dead_letters:
            say(f"   after {took:.1f} s more: deliveries={dead['deliveries']} {dead['error']!r}")
        say(f"5. XPENDING {stream} {GROUP}: {result.pending} pending")
        return result
    finally:
        for app in apps:
            await app.stop()
        await redis.delete(stream, f"{stream}:dead")
        await redis.aclose()


async def outcome(redis: RedisClient, stream: str, tally: Tally) -> WorkQueueResult:
    failed = tally.seen.pop("failed", [])
    dead = [decoded(fields) for _, fields in await redis.xrange(f"{stream}:dead")]
    pending = (await redis.xpending(stream, GROUP))["pending"]
    return WorkQueueResult(tally.counts(), tally.duplicates(), len(failed), dead, pending)


def decoded(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in fields.items()}


@dataclass
class ClaimResult:
    held_by_dead_worker: int  # pending entries of the worker that died
    claimed_by: dict[str, int]  # who charged them in the end
    seconds_to_claim: float  # from the death to the last XACK
    pending_after: int


async def crash_and_claim(url: str = REDIS_URL, held: int = 3, say: Say = print) -> ClaimResult:
    """A worker reads HELD jobs and dies before XACK; the rescuer claims them after MIN_IDLE_MS."""
    stream, tally = unique("charges"), Tally()
    redis = RedisClient.from_url(url)
    rescuer = worker_app(url, stream, "rescuer", tally, claim_idle_ms=MIN_IDLE_MS)
    try:
        await redis.xgroup_create(stream, GROUP, id="$", mkstream=True)
        await rescuer.connect()
        for i in range(held):
            await rescuer.publish(ChargeCard(order_id=i), stream=stream)
        await redis.xreadgroup(GROUP, "worker-2", {stream: ">"}, count=held)
        died = time.monotonic()
        summary = await redis.xpending(stream, GROUP)
        say(f"1. worker-2 XREADGROUPs {held} jobs and is killed before XACK")
        holders = {c["name"].decode(): c["pending"] for c in summary["consumers"]}
        say(f"   XPENDING: {summary['pending']} pending, held by {holders}")
        await rescuer.start()
        await wait_until(lambda: tally.count("rescuer") >= held, 10, "the claim")
        took = time.monotonic() - died
        after = (await redis.xpending(stream, GROUP))["pending"]
        say(f"2. after {took:.1f} s (min-idle {MIN_IDLE_MS} ms) the rescuer claimed and charged")
        say(f"   {tally.counts()}; XPENDING: {after} pending")
        return ClaimResult(summary["pending"], tally.counts(), took, after)
    finally:
        await rescuer.stop()
        await redis.delete(stream)
        await redis.aclose()


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--url", default=REDIS_URL, help="Redis (default: %(default)s)")
    parser.add_argument("--count", type=int, default=20, help="good jobs")
    args = parser.parse_args()
    print("== two competing workers, one poison job")
    asyncio.run(competing_workers(args.url, args.count))
    print("== a worker dies holding jobs")
    asyncio.run(crash_and_claim(args.url))


if __name__ == "__main__":
    main()
