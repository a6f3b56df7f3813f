"""The broker's own security events -- failed logins, users and permissions changed -- from
RabbitMQ's event exchange plugin, into the audit trail.

The plugin (``rabbitmq_event_exchange``) publishes each event of the broker on the internal
topic exchange ``amq.rabbitmq.event``: only the broker can publish there. At start-up the
audit binds its queue ``audit.broker-events`` to it for the security events, when the
exchange exists; on a broker without the plugin it says so in its log and audits the events
on ``shop.events`` only. Compose's broker loads the plugin; the machine's broker may not.

A broker event is no Warren event: no envelope, no contract, no handler table. So its
consumer is small -- read the headers, record them (idempotent), ack -- and borrows Warren's
delivery rules for what goes wrong: a failure to record is retried, then dead-lettered; a
message that did not come from the broker (the default exchange routes into any queue by
name) is poison, dead-lettered at once as forged.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import aio_pika
import structlog
from aiormq.exceptions import ChannelClosed, ChannelNotFoundEntity
from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage

from services.audit.domain import broker_event
from services.audit.repository import AuditTrail
from shared import topology
from shared.contracts import PoisonMessageError
from shared.messaging import H_ROUTING_KEY, EventConsumer, attempts_so_far, consume_settled

log = structlog.get_logger(__name__)


# --8<-- [start:bind-broker-events]
async def bind_broker_events(rabbit_url: str) -> bool:
    """Bind ``audit.broker-events`` to the broker's event exchange for the security events,
    if the exchange exists (a passive check, on a connection of its own: the broker closes
    the channel of a check that fails). Whether the broker's events are audited now."""
    connection = await aio_pika.connect(rabbit_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        try:
            exchange = await channel.declare_exchange(topology.BROKER_EVENTS, passive=True)
            queue = await channel.get_queue(topology.AUDIT_BROKER_EVENTS.name, ensure=False)
            for key in topology.BROKER_SECURITY_EVENTS:
                await queue.bind(exchange, routing_key=key)
        except ChannelNotFoundEntity:
            log.warning(
                "the broker has no event exchange: its security events are not audited "
                "(enable the rabbitmq_event_exchange plugin)",
                exchange=topology.BROKER_EVENTS,
            )
            return False
        except ChannelClosed as exc:  # e.g. ACCESS_REFUSED: the user was provisioned before
            log.error("cannot bind to the broker's event exchange", error=str(exc))
            return False
    log.info("auditing the broker's security events", keys=topology.BROKER_SECURITY_EVENTS)
    return True
    # --8<-- [end:bind-broker-events]


def _now() -> datetime:
    return datetime.now(UTC)


class BrokerEventConsumer:
    """Records each broker event once; what fails or is forged follows Warren's rules."""

    def __init__(
        self,
        broker: RabbitBroker,
        trail: AuditTrail,
        *,
        retry_delays: tuple[int, ...],
        trusted: frozenset[str],
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.trail, self.trusted, self.clock = trail, trusted, clock
        # Warren's delivery rules for a failure: poison to the DLQ at once, else retried.
        self.rules = EventConsumer(broker, topology.AUDIT_BROKER_EVENTS, {}, retry_delays)

    def event_name(self, message: RabbitMessage) -> str:
        """The event (its routing key), for a message the broker published -- or a copy of
        one that this service (a retry) or an operator (a replay) made. Anything else is
        forged."""
        raw, headers = message.raw_message, message.headers or {}
        if raw.exchange == topology.BROKER_EVENTS:
            return raw.routing_key or ""
        if (raw.user_id or "") in self.trusted and headers.get(H_ROUTING_KEY):
            return str(headers[H_ROUTING_KEY])
        raise PoisonMessageError(
            f"forged: not from the broker's event exchange (exchange {raw.exchange or 'default'}"
            f", user {raw.user_id or 'unknown'})"
        )

    async def handle(self, message: RabbitMessage) -> None:
        attempts = attempts_so_far(message) + 1
        bound = log.bind(queue=topology.AUDIT_BROKER_EVENTS.name)
        try:
            name = self.event_name(message)
            await self.trail.record_broker_event(
                broker_event(name, message.headers or {}, self.clock())
            )
        except Exception as exc:
            await self.rules.failed(message, attempts, exc, bound, publisher=None)
        else:
            bound.info("broker event recorded", broker_event=name)
        await message.ack()  # only now: recorded, or its retry or DLQ copy confirmed


def subscribe_broker_events(broker: RabbitBroker, consumer: BrokerEventConsumer) -> None:
    consume_settled(broker, topology.AUDIT_BROKER_EVENTS, consumer.handle)
