"""One broker user per service, least privilege, and verified publishers -- attacked on the real
broker. Each test plays a compromised service (or a container on the same network holding one
service's credentials) and asserts that RabbitMQ, or the consumer, refuses what it tries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed

from shared import messaging, topology
from shared.contracts import Envelope, PaymentSucceeded, StockRejected
from shared.settings import WarrenSettings
from shared.testing.system import rabbitmqctl_command
from tests.support.broker_users import Broker, provisioned_vhost
from tests.support.dlq import dead_letters
from tests.support.polling import eventually

pytestmark = pytest.mark.skipif(
    rabbitmqctl_command() is None, reason="provisioning users needs rabbitmqctl (as root)"
)


@pytest.fixture(scope="module")
def broker(rabbit_url: str) -> Iterator[Broker]:
    """A vhost of its own, provisioned by `warren topology provision` as `make run` does."""
    with provisioned_vhost(rabbit_url, "identity") as provisioned:
        # The users are broker-wide: the passwords are `make run`'s (.env).
        assert set(provisioned.passwords) == {access.user for access in topology.SERVICES}
        yield provisioned


@pytest.fixture
async def as_payment(broker: Broker) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(broker.url("payment"))
    async with connection:
        yield connection


def event(data: object, source: str) -> aio_pika.Message:
    envelope = Envelope.wrap(data, source=source)  # type: ignore[arg-type]
    return aio_pika.Message(envelope.model_dump_json().encode(), message_id=envelope.id)


rejected = StockRejected(order_id="o-1", reason="insufficient stock")


async def test_a_service_cannot_publish_another_services_event_type(as_payment) -> None:  # type: ignore[no-untyped-def]
    channel = await as_payment.channel(publisher_confirms=True)
    events = await channel.get_exchange(topology.EVENTS.name, ensure=False)
    with pytest.raises(ChannelAccessRefused, match=r"stock\.rejected"):
        await events.publish(event(rejected, "payment"), routing_key="stock.rejected")


async def test_a_service_may_publish_its_own_event_type(as_payment) -> None:  # type: ignore[no-untyped-def]
    channel = await as_payment.channel(publisher_confirms=True)
    events = await channel.get_exchange(topology.EVENTS.name, ensure=False)
    paid = PaymentSucceeded(order_id="o-1", payment_id="ch", amount_cents=100)
    message = event(paid, "payment")
    message.user_id = "payment"
    await events.publish(message, routing_key="payment.succeeded")  # confirmed: no error


async def test_a_forged_user_id_is_refused_by_the_broker(as_payment) -> None:  # type: ignore[no-untyped-def]
    channel = await as_payment.channel(publisher_confirms=True)
    events = await channel.get_exchange(topology.EVENTS.name, ensure=False)
    paid = PaymentSucceeded(order_id="o-1", payment_id="ch", amount_cents=100)
    message = event(paid, "payment")
    message.user_id = "inventory"
    with pytest.raises(ChannelPreconditionFailed, match="user_id"):
        await events.publish(message, routing_key="payment.succeeded")


@pytest.mark.parametrize(
    "attempt",
    ["read another's queue", "delete another's queue", "purge a DLQ", "declare an exchange"],
)
async def test_a_service_cannot_touch_what_is_not_its_own(as_payment, attempt: str) -> None:  # type: ignore[no-untyped-def]
    channel = await as_payment.channel()
    with pytest.raises(ChannelAccessRefused):
        match attempt:
            case "read another's queue":
                queue = await channel.get_queue(topology.ORDER_SAGA_REPLIES.name, ensure=False)
                await queue.get(no_ack=True, fail=False)
            case "delete another's queue":
                await channel.queue_delete(topology.ORDER_SAGA_REPLIES.name)
            case "purge a DLQ":
                dlq = await channel.get_queue(
                    topology.INVENTORY_ORDER_PLACED.dlq_name, ensure=False
                )
                await dlq.purge()
            case "declare an exchange":
                await channel.declare_exchange("payment.own-exchange", durable=True)


class Recorder:
    def __init__(self, failures: int = 0) -> None:
        self.failures, self.calls, self.seen = failures, 0, list[str]()

    async def __call__(self, envelope: Envelope, data: object) -> list[Envelope]:
        self.calls += 1
        self.seen.append(envelope.id)
        if self.calls <= self.failures:
            raise ConnectionError("the database stalled (simulated)")
        return []


async def copies(broker: Broker, message_id: str) -> list[dict[str, object]]:
    """The headers of order.saga-replies' dead letters of one message."""
    found = await dead_letters(broker.operator, topology.ORDER_SAGA_REPLIES)
    return [dict(m.headers) for m in found if m.message_id == message_id]


async def consume_as_order(broker: Broker, handler: Recorder) -> messaging.RabbitBroker:
    settings = WarrenSettings(rabbit_url=broker.url("order"), service_name="order")
    consumer = messaging.make_broker(settings)
    identity = messaging.Identity(user="order", operators=settings.broker_operators)
    messaging.subscribe_events(
        consumer,
        topology.ORDER_SAGA_REPLIES,
        {StockRejected: handler, PaymentSucceeded: handler},
        retry_delays=(1,),
        identity=identity,
    )
    await consumer.start()
    return consumer


async def test_an_event_from_the_wrong_service_is_dead_lettered_as_forged(broker: Broker) -> None:
    """Notification may write to the default exchange (it hands emails to Celery): it can drop
    a payment.succeeded straight into order's queue, past the topic permissions. The consumer
    reads the user_id that RabbitMQ checked, and refuses it."""
    handler = Recorder()
    consumer = await consume_as_order(broker, handler)
    paid = PaymentSucceeded(order_id="o-1", payment_id="ch", amount_cents=100)
    forged = event(paid, "payment")
    forged.user_id = "notification"
    try:
        connection = await aio_pika.connect(broker.url("notification"))
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(forged, topology.ORDER_SAGA_REPLIES.name)
        [dead] = await eventually(
            lambda: copies(broker, forged.message_id or ""),
            until=lambda found: len(found) == 1,
        )
    finally:
        await consumer.stop()
    assert dead["x-warren-reason"] == (
        "poison: forged: payment.succeeded is published by payment, this one by notification"
    )
    assert forged.message_id not in handler.seen


async def test_a_genuine_event_is_handled_and_its_retry_copy_too(broker: Broker) -> None:
    """The retry copy is published by order itself: it carries the original's verified
    publisher, so the second attempt is not taken for a forgery."""
    handler = Recorder(failures=1)
    consumer = await consume_as_order(broker, handler)
    try:
        connection = await aio_pika.connect(broker.url("inventory"))
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            events = await channel.get_exchange(topology.EVENTS.name, ensure=False)
            genuine = event(rejected, "inventory")
            genuine.user_id = "inventory"
            await events.publish(genuine, routing_key="stock.rejected")
        await eventually(
            lambda: handler.seen.count(genuine.message_id or ""), until=lambda n: n == 2, timeout=10
        )
    finally:
        await consumer.stop()
    assert await copies(broker, genuine.message_id or "") == []
