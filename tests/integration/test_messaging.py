"""Warren's delivery rules against the real RabbitMQ: retries with backoff, dead letters, confirms."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import aio_pika
import pytest
from aio_pika.exceptions import DeliveryError
from faststream.rabbit import RabbitBroker

from shared import messaging, topology
from shared.contracts import Envelope, EventData, OrderConfirmed, PaymentFailed
from shared.settings import WarrenSettings
from tests.support.dlq import dead_letters
from tests.support.polling import eventually


@dataclass
class FlakyHandler:
    """Fails the first ``failures`` calls per event, then succeeds; remembers what it saw."""

    failures: int = 0
    calls: list[tuple[str, float]] = field(default_factory=list)
    handled: list[str] = field(default_factory=list)

    async def __call__(self, envelope: Envelope, payload: EventData) -> Sequence[Envelope]:
        self.calls.append((envelope.id, time.monotonic()))
        if sum(1 for event_id, _ in self.calls if event_id == envelope.id) <= self.failures:
            raise ConnectionError("database unreachable (simulated)")
        self.handled.append(envelope.id)
        return []


RETRY_DELAYS = (1, 1)  # 3 attempts, then the DLQ


def confirmed(order_id: str = "o-1") -> Envelope:
    return Envelope.wrap(
        OrderConfirmed(order_id=order_id, customer_id="c", total_cents=1), source="test"
    )


async def run_consumer(
    rabbit_url: str, queue: topology.ConsumerQueue, handler: FlakyHandler
) -> RabbitBroker:
    broker = messaging.make_broker(WarrenSettings(rabbit_url=rabbit_url, service_name="test"))
    await broker.connect()
    await topology.declare_consumer_queue(broker, queue, RETRY_DELAYS)
    messaging.subscribe_events(broker, queue, {OrderConfirmed: handler}, retry_delays=RETRY_DELAYS)
    await broker.start()
    return broker


async def send(
    broker: RabbitBroker, queue: topology.ConsumerQueue, body: bytes | str, message_id: str
) -> None:
    await broker.publish(body, queue=queue.name, persist=True, message_id=message_id)


async def test_a_poison_message_is_dead_lettered_at_once_and_the_consumer_goes_on(
    rabbit_url: str, test_queue: topology.ConsumerQueue
) -> None:
    handler = FlakyHandler()
    broker = await run_consumer(rabbit_url, test_queue, handler)
    try:
        sent_at = time.monotonic()
        await send(broker, test_queue, b"\x00 definitely not json", "poison-1")
        good = confirmed()
        await send(broker, test_queue, good.model_dump_json(), good.id)

        await eventually(
            lambda: dead_letters(rabbit_url, test_queue), until=lambda m: len(m) == 1, timeout=5
        )
        assert time.monotonic() - sent_at < 2.0  # "within a second", with slack for a busy CI
        await eventually(lambda: list(handler.handled), until=lambda h: good.id in h, timeout=5)
    finally:
        await broker.stop()
    [dead] = await dead_letters(rabbit_url, test_queue)
    headers = dead.headers
    assert dead.message_id == "poison-1"
    assert str(headers["x-warren-reason"]).startswith("poison:")
    assert headers["x-warren-original-queue"] == test_queue.name
    assert headers["x-warren-attempts"] == 1
    assert "x-warren-first-failure" in headers and "x-warren-exception" in headers


async def test_an_event_the_queue_has_no_handler_for_is_dead_lettered_at_once(
    rabbit_url: str, test_queue: topology.ConsumerQueue
) -> None:
    """Reproduced: an event routed to a queue whose service had no handler for it ended in an
    AssertionError, three retries and the DLQ; it is poison, and says so."""
    handler = FlakyHandler()
    broker = await run_consumer(rabbit_url, test_queue, handler)
    try:
        stray = Envelope.wrap(PaymentFailed(order_id="o-9", reason="x"), source="test")
        await send(broker, test_queue, stray.model_dump_json(), stray.id)
        good = confirmed()
        await send(broker, test_queue, good.model_dump_json(), good.id)
        [dead] = await eventually(
            lambda: dead_letters(rabbit_url, test_queue), until=lambda m: len(m) == 1, timeout=5
        )
        await eventually(lambda: list(handler.handled), until=lambda h: good.id in h, timeout=5)
    finally:
        await broker.stop()
    assert dead.message_id == stray.id
    assert dead.headers["x-warren-reason"] == (
        f"poison: no handler for payment.failed v1 in {test_queue.name}"
    )
    assert dead.headers["x-warren-attempts"] == 1  # not retried: no retry can help
    assert handler.calls == [(good.id, handler.calls[0][1])]


async def test_a_transient_failure_is_retried_after_a_delay_not_in_a_hot_loop(
    rabbit_url: str, test_queue: topology.ConsumerQueue
) -> None:
    handler = FlakyHandler(failures=1)
    broker = await run_consumer(rabbit_url, test_queue, handler)
    try:
        event = confirmed()
        await send(broker, test_queue, event.model_dump_json(), event.id)
        await eventually(lambda: list(handler.handled), until=lambda h: event.id in h, timeout=10)
    finally:
        await broker.stop()
    (_, first), (_, second) = handler.calls
    assert second - first >= 0.9  # waited in the 1 s delay queue
    assert await dead_letters(rabbit_url, test_queue) == []


async def test_exhausted_retries_go_to_the_dlq_with_the_reason_and_can_be_replayed(
    rabbit_url: str, test_queue: topology.ConsumerQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = FlakyHandler(failures=3)  # RETRY_DELAYS: 3 attempts, then the DLQ
    broker = await run_consumer(rabbit_url, test_queue, handler)
    try:
        event = confirmed()
        await send(broker, test_queue, event.model_dump_json(), event.id)
        [dead] = await eventually(
            lambda: dead_letters(rabbit_url, test_queue), until=lambda m: len(m) == 1, timeout=10
        )
        assert dead.headers["x-warren-reason"] == "retries exhausted"
        assert dead.headers["x-warren-attempts"] == 3
        assert "database unreachable" in str(dead.headers["x-warren-exception"])
        assert handler.handled == []

        # The DLQ tool puts it back with a fresh retry budget; the handler now succeeds.
        from cli import dlq

        monkeypatch.setattr(dlq, "_consumer_queue", lambda name: test_queue)
        monkeypatch.setenv("RABBIT_URL", rabbit_url)
        assert await dlq.replay_messages(test_queue.name, event.id) == 1
        await eventually(lambda: list(handler.handled), until=lambda h: h == [event.id], timeout=10)
    finally:
        await broker.stop()
    assert await dead_letters(rabbit_url, test_queue) == []


async def test_an_unroutable_publish_raises_instead_of_vanishing(rabbit_url: str) -> None:
    broker = messaging.make_broker(WarrenSettings(rabbit_url=rabbit_url))
    await broker.connect()
    try:
        with pytest.raises(DeliveryError):
            await broker.publish(b"{}", queue=f"no-such-queue-{uuid.uuid4().hex}", persist=True)
    finally:
        await broker.stop()


async def test_replaying_to_a_queue_that_is_gone_fails_and_keeps_the_dead_letter(
    rabbit_url: str, test_queue: topology.ConsumerQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import dlq

    broker = messaging.make_broker(WarrenSettings(rabbit_url=rabbit_url))
    await broker.connect()
    try:
        await topology.declare_consumer_queue(broker, test_queue, RETRY_DELAYS)
        event = confirmed()
        await broker.publish(
            event.model_dump_json(),
            exchange=topology.DEAD_LETTER,
            routing_key=test_queue.name,
            persist=True,
            message_id=event.id,
            headers={
                "x-warren-reason": "retries exhausted",
                "x-warren-dead-lettered-at": "2026-11-26T00:00:00Z",
                "x-warren-original-queue": f"gone-{uuid.uuid4().hex[:6]}",
            },
        )
    finally:
        await broker.stop()
    monkeypatch.setattr(dlq, "_consumer_queue", lambda name: test_queue)
    monkeypatch.setenv("RABBIT_URL", rabbit_url)
    with pytest.raises(DeliveryError):
        await dlq.replay_messages(test_queue.name, event.id)
    [kept] = await dead_letters(rabbit_url, test_queue)
    assert kept.message_id == event.id
    [shown] = await dlq.show_messages(test_queue.name, 5)
    assert shown["reason"] == "retries exhausted"


async def _reject_until_dead_lettered(rabbit_url: str, queue: topology.ConsumerQueue) -> None:
    """Play a consumer that crashes on the message every time: the quorum queue's delivery
    limit dead-letters it (reason ``delivery_limit``, an ``x-death`` naming the queue)."""
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        source = await channel.get_queue(queue.name)
        for _ in range(topology.DELIVERY_LIMIT + 1):
            message = await eventually(
                lambda: source.get(no_ack=False, fail=False), until=lambda m: m is not None
            )
            await message.reject(requeue=True)


async def test_a_replayed_delivery_limit_dead_letter_survives_a_transient_failure(
    rabbit_url: str, test_queue: topology.ConsumerQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ 3.x drops a dead-lettered message whose x-death names the queue it returns to
    ("Dead-letter queues cycle detected"): every copy Warren publishes leaves x-death behind."""
    broker = messaging.make_broker(WarrenSettings(rabbit_url=rabbit_url, service_name="test"))
    await broker.connect()
    await topology.declare_consumer_queue(broker, test_queue, RETRY_DELAYS)
    event = confirmed()
    await send(broker, test_queue, event.model_dump_json(), event.id)
    await broker.stop()
    await _reject_until_dead_lettered(rabbit_url, test_queue)
    [dead] = await eventually(
        lambda: dead_letters(rabbit_url, test_queue), until=lambda m: len(m) == 1
    )
    assert dead.headers["x-death"][0]["reason"] == "delivery_limit"

    from cli import dlq

    monkeypatch.setattr(dlq, "_consumer_queue", lambda name: test_queue)
    monkeypatch.setenv("RABBIT_URL", rabbit_url)
    assert await dlq.replay_messages(test_queue.name, event.id) == 1
    handler = FlakyHandler(failures=1)  # the database stalls once: one trip through a delay queue
    broker = await run_consumer(rabbit_url, test_queue, handler)
    try:
        await eventually(lambda: list(handler.handled), until=lambda h: h == [event.id], timeout=10)
        assert [event_id for event_id, _ in handler.calls] == [event.id, event.id]
    finally:
        await broker.stop()
    assert await dead_letters(rabbit_url, test_queue) == []


async def test_an_event_with_a_field_added_by_a_newer_producer_is_handled_not_dead_lettered(
    rabbit_url: str, test_queue: topology.ConsumerQueue
) -> None:
    handler = FlakyHandler()
    broker = await run_consumer(rabbit_url, test_queue, handler)
    try:
        event = confirmed()
        wire = event.model_dump(mode="json")
        wire["data"]["loyalty_points"] = 12  # added in v1 by a producer deployed first
        await send(broker, test_queue, json.dumps(wire), event.id)
        await eventually(lambda: list(handler.handled), until=lambda h: h == [event.id])
    finally:
        await broker.stop()
    assert await dead_letters(rabbit_url, test_queue) == []


async def test_bytes_that_claim_to_be_json_but_are_not_even_text_are_dead_lettered(
    rabbit_url: str, test_queue: topology.ConsumerQueue
) -> None:
    """Found by `make chaos`: FastStream decoded a body labelled JSON before the handler ran;
    undecodable bytes raised there, and the message stayed unacked -- ten of them filled the
    prefetch and the consumer stopped."""
    handler = FlakyHandler()
    broker = await run_consumer(rabbit_url, test_queue, handler)
    try:
        for n in range(messaging_prefetch() + 2):
            await broker.publish(
                b"\x00\xff not json",
                queue=test_queue.name,
                persist=True,
                message_id=f"poison-{n}",
                content_type="application/json",
            )
        good = confirmed()
        await send(broker, test_queue, good.model_dump_json(), good.id)
        await eventually(lambda: list(handler.handled), until=lambda h: good.id in h, timeout=10)
    finally:
        await broker.stop()
    dead = await dead_letters(rabbit_url, test_queue)
    assert len(dead) == messaging_prefetch() + 2
    assert all(str(d.headers["x-warren-reason"]).startswith("poison:") for d in dead)


def messaging_prefetch() -> int:
    return WarrenSettings().prefetch
