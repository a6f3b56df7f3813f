"""The broker factory, event publishing and the one way Warren consumes events.

Every publish is persistent, mandatory (an unroutable message raises instead of vanishing) and
waits for the broker's confirm. Every consumer goes through :func:`subscribe_events`, which
decodes the envelope, calls the service's handler, publishes what it returns, and only then
acks. Failures never drop a message:

* poison (undecodable, schema-invalid, unknown type/version, or a type this queue has no
  handler for) -> the queue's DLQ at once;
* anything else -> retried after 1 s, 5 s, 25 s, 1, 2, 5 and 5 min through the delay queues
  (``RETRY_DELAYS_SECONDS``, a setting), then the DLQ.

Each dead-lettered message carries ``x-warren-*`` headers saying why. The trace context and
the baggage travel in message headers, in the format ``OTEL_PROPAGATORS`` names (W3C by
default), as on every other hop.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from aio_pika.exceptions import DeliveryError
from faststream import AckPolicy, BaseMiddleware
from faststream.rabbit import Channel, RabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from opentelemetry import baggage, metrics, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pamqp.commands import Basic

from shared import topology
from shared.clock import utcnow_iso
from shared.contracts import Envelope, EventData, PoisonMessageError, decode_event
from shared.faults import crash_point
from shared.metrics import HANDLER_DURATION, MESSAGES
from shared.observability import TAGGED_BAGGAGE, order_context
from shared.settings import WarrenSettings

log = structlog.get_logger(__name__)

# Headers Warren adds to a message it retries or dead-letters.
H_ATTEMPTS = "x-warren-attempts"
H_REASON = "x-warren-reason"
H_EXCEPTION = "x-warren-exception"
H_ORIGINAL_QUEUE = "x-warren-original-queue"
H_FIRST_FAILURE = "x-warren-first-failure"
# When an early event was first held back (HeldBackError): its wait is bounded from then.
H_HELD_SINCE = "x-warren-held-since"
H_DEAD_LETTERED_AT = "x-warren-dead-lettered-at"
H_BROKER_DEATHS = "x-warren-broker-deaths"
# Who published the original of a copy (a retry, a dead letter, an operator's replay), as the
# consumer verified it. Trusted only on copies made by the consumer itself or an operator.
H_PUBLISHER = "x-warren-publisher"
# The routing key the original arrived with (a copy comes back by its queue's name). Trusted,
# like x-warren-publisher, only on copies made by the consumer itself or an operator.
H_ROUTING_KEY = "x-warren-routing-key"

# The broker's own dead-letter history. RabbitMQ 3.x drops a dead-lettered message whose
# x-death (even one a client copied in) names the queue it is routed back to ("Dead-letter
# queues cycle detected"), so no copy Warren publishes carries these: the history moves into
# x-warren-broker-deaths instead. (4.x ignores a client-supplied x-death.)
BROKER_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")

PUBLISH_TIMEOUT_SECONDS = 10.0

EventHandler = Callable[[Envelope, Any], Awaitable[Sequence[Envelope]]]
"""A service's business function, its dependencies bound: the event in, the events to publish out."""

Routes = Mapping[type[EventData], EventHandler]
"""What one queue's consumer calls for each event class it receives."""


# --8<-- [start:baggage-middleware]
# FastStream's telemetry middleware reads and writes W3C headers only, whatever OTEL_PROPAGATORS
# says (FastStream 0.7 has no setting for it): the two middlewares below translate at its edges.
_FASTSTREAM_TRACE = TraceContextTextMapPropagator()
_FASTSTREAM_FIELDS = _FASTSTREAM_TRACE.fields | W3CBaggagePropagator().fields


def _text(headers: dict[str, Any]) -> dict[str, str]:
    """The headers a propagator may read (AMQP headers also hold numbers, lists, bytes)."""
    return {key: value for key, value in headers.items() if isinstance(value, str)}


class IncomingTraceMiddleware(BaseMiddleware):
    """Listed first: hands FastStream the message's trace context as the ``traceparent`` it reads.

    The context arrives in the format OTEL_PROPAGATORS names (W3C by default, B3...); without
    this, a message whose context FastStream cannot read would start a trace of its own. With
    W3C's propagators (the default) there is nothing to translate, and it steps aside -- when
    the headers are text, as every Warren publisher writes them.
    """

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        if _reads_as_is(msg.headers):
            return await call_next(msg)
        incoming = propagate.extract(_text(msg.headers), context=Context())
        headers = {k: v for k, v in msg.headers.items() if k not in _FASTSTREAM_TRACE.fields}
        _FASTSTREAM_TRACE.inject(headers, context=incoming)
        msg.headers = headers
        return await call_next(msg)


def _reads_as_is(headers: dict[str, Any]) -> bool:
    """Whether FastStream reads the message's trace context as the configured propagators
    would: they are W3C trace context (and baggage), and its headers are text."""
    fields = propagate.get_global_textmap().fields
    return _FASTSTREAM_TRACE.fields <= fields <= _FASTSTREAM_FIELDS and all(
        isinstance(headers.get(field, ""), str) for field in _FASTSTREAM_TRACE.fields
    )


class PropagationMiddleware(BaseMiddleware):
    """Listed last, so it runs inside FastStream's spans: baggage in, OTEL_PROPAGATORS out.

    Consuming: FastStream starts its consumer span from the trace context alone, so this one
    attaches the message's baggage (``order.id``, ``synthetic_request``: spans, logs and the
    events stored by the handler carry it on) and tags the consumer span itself.

    Publishing: FastStream has just written its span's context as W3C headers; this one writes
    that span and the current baggage again with the configured propagators.
    """

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        incoming = propagate.extract(_text(msg.headers), context=Context())
        context, span = otel_context.get_current(), trace.get_current_span()
        for key, value in baggage.get_all(incoming).items():
            context = baggage.set_baggage(key, value, context)
            if key in TAGGED_BAGGAGE:
                span.set_attribute(key, str(value))
        token = otel_context.attach(context)
        try:
            return await call_next(msg)
        finally:
            otel_context.detach(token)

    async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
        written = _FASTSTREAM_TRACE.extract(_text(cmd.headers), context=Context())
        propagator = propagate.get_global_textmap()
        # A retried or dead-lettered copy still carries the original's: drop those too.
        stale = _FASTSTREAM_FIELDS | propagator.fields
        headers = {k: v for k, v in cmd.headers.items() if k not in stale}
        # FastStream's span, with the current baggage.
        context = trace.set_span_in_context(
            trace.get_current_span(written), otel_context.get_current()
        )
        propagator.inject(headers, context=context)
        cmd.headers = headers
        return await call_next(cmd)
        # --8<-- [end:baggage-middleware]


# --8<-- [start:broker-middlewares]
def broker_middlewares(tracer_provider: TracerProvider | None = None) -> tuple[Any, ...]:
    """Every broker's middlewares, outermost first: a message passes them in this order on
    its way to the handler, and so does a publish on its way to the broker."""
    return (
        IncomingTraceMiddleware,  # the message's trace context, as FastStream reads it
        # Spans, and the messaging metrics (messaging_process_duration_seconds, ...).
        RabbitTelemetryMiddleware(
            tracer_provider=tracer_provider or trace.get_tracer_provider(),
            meter_provider=metrics.get_meter_provider(),
        ),
        PropagationMiddleware,  # inside the telemetry middleware's spans
    )
    # --8<-- [end:broker-middlewares]


# --8<-- [start:user-id]
def stamp_user_id(user: str) -> type[BaseMiddleware]:
    """A middleware that sets the AMQP ``user_id`` of every message this broker publishes to
    the user it connected as. RabbitMQ refuses a publish whose ``user_id`` is not the
    connection's user, so a consumer that reads it knows who published the message."""

    class StampUserId(BaseMiddleware):
        async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
            cmd.message_options["user_id"] = user
            return await call_next(cmd)

    return StampUserId
    # --8<-- [end:user-id]


# --8<-- [start:make-broker]
def make_broker(settings: WarrenSettings, *, prefetch: int | None = None) -> RabbitBroker:
    """The one broker factory: confirms on, unroutable messages raise, telemetry on."""
    return RabbitBroker(
        settings.rabbit_url,
        default_channel=Channel(
            prefetch_count=prefetch or settings.prefetch,
            publisher_confirms=True,
            on_return_raises=True,
        ),
        app_id=settings.service_name,
        graceful_timeout=10.0,
        # Keep retrying the connection after start-up; services reconnect by themselves.
        reconnect_interval=2.0,
        # Tracing (spans, trace headers, baggage), and who publishes (the AMQP user_id).
        middlewares=(*broker_middlewares(), stamp_user_id(settings.broker_user)),
        logger=logging.getLogger("faststream.broker"),
        # FastStream's own "Received"/"Processed" lines at DEBUG: our handler logs say more.
        log_level=logging.DEBUG,
    )
    # --8<-- [end:make-broker]


class HeldBackError(Exception):
    """Raised by a handler: this event came before the one it must follow (its
    ``previous_sequence`` is not handled yet). It goes round the shortest delay queue and comes
    back -- without using up an attempt: it is early, not failing. The handler bounds the wait
    (shared/ordering.py: past it, a gap is reported and the event applied)."""


# --8<-- [start:push-back]
def is_push_back(exc: BaseException) -> bool:
    """A negative confirm (``basic.nack``): the broker took the message but a queue it goes to
    refused it, being full (``overflow: reject-publish``). An unroutable message comes back as a
    ``basic.return`` instead: that one is the message's fault."""
    return isinstance(exc, DeliveryError) and isinstance(exc.frame, Basic.Nack)


# --8<-- [end:push-back]


# --8<-- [start:publish-event]
async def publish_event(
    broker: RabbitBroker, envelope: Envelope, *, headers: dict[str, Any] | None = None
) -> None:
    """Publish one event to ``shop.events``: persistent, mandatory, confirmed."""
    await broker.publish(
        envelope.model_dump(mode="json"),
        exchange=topology.EVENTS,
        routing_key=envelope.type,
        persist=True,
        mandatory=True,
        message_id=envelope.id,
        correlation_id=envelope.correlation_id,
        message_type=envelope.type,
        content_type="application/json",
        timestamp=envelope.occurred_at,
        headers=headers or {},
        # Waiting for the confirm is bounded: while the broker is away, fail and retry later.
        timeout=PUBLISH_TIMEOUT_SECONDS,
    )
    # --8<-- [end:publish-event]


async def _republish(
    broker: RabbitBroker,
    message: RabbitMessage,
    *,
    exchange: Any,
    routing_key: str,
    headers: dict[str, Any],
) -> None:
    """Publish a copy of ``message`` (same body, id and correlation id) with ``headers``."""
    raw = message.raw_message
    await broker.publish(
        message.body,
        exchange=exchange,
        routing_key=routing_key,
        persist=True,
        mandatory=True,
        message_id=raw.message_id,
        correlation_id=raw.correlation_id,
        message_type=raw.type,
        content_type=raw.content_type or "application/json",
        headers=headers,
        timeout=PUBLISH_TIMEOUT_SECONDS,
    )


# --8<-- [start:copy-headers]
def copy_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """The headers for a copy of a message: everything but the broker's dead-letter history,
    which is kept as readable lines in ``x-warren-broker-deaths`` (oldest first)."""
    copied: dict[str, Any] = {}
    history = list((headers or {}).get(H_BROKER_DEATHS) or [])
    for key, value in (headers or {}).items():
        if key == "x-death":
            # The broker lists the most recent death first; one entry per (queue, reason).
            for death in reversed(value if isinstance(value, list) else []):
                history.append(
                    f"{death.get('reason')} in {death.get('queue')} (x{death.get('count', 1)})"
                )
        elif not key.startswith(BROKER_DEATH_HEADERS):
            copied[key] = value
    if history:
        copied[H_BROKER_DEATHS] = history
    return copied
    # --8<-- [end:copy-headers]


def _failure_headers(
    message: RabbitMessage,
    queue_name: str,
    *,
    reason: str,
    exception: BaseException | None,
    attempts: int,
    publisher: str | None,
) -> dict[str, Any]:
    """The message's own headers plus why, where from, how often and since when it failed,
    and who published it (as the consumer verified it)."""
    headers = copy_headers(message.headers)
    if publisher:
        headers[H_PUBLISHER] = publisher
    headers.setdefault(H_ROUTING_KEY, message.raw_message.routing_key or "")
    headers.update(
        {
            H_REASON: reason[:1000],
            H_EXCEPTION: (
                "".join(traceback.format_exception_only(exception)).strip()[:2000]
                if exception
                else ""
            ),
            H_ORIGINAL_QUEUE: queue_name,
            H_ATTEMPTS: attempts,
            H_FIRST_FAILURE: headers.get(H_FIRST_FAILURE) or utcnow_iso(),
        }
    )
    if isinstance(exception, HeldBackError):
        headers[H_HELD_SINCE] = headers.get(H_HELD_SINCE) or utcnow_iso()
    return headers


# --8<-- [start:dead-letter]
async def dead_letter(
    broker: RabbitBroker,
    message: RabbitMessage,
    queue_name: str,
    *,
    reason: str,
    exception: BaseException | None,
    attempts: int,
    publisher: str | None = None,
) -> None:
    """Send ``message`` to its queue's DLQ with the reason in headers (the caller acks after)."""
    headers = _failure_headers(
        message,
        queue_name,
        reason=reason,
        exception=exception,
        attempts=attempts,
        publisher=publisher,
    )
    headers[H_DEAD_LETTERED_AT] = utcnow_iso()
    await _republish(
        broker, message, exchange=topology.DEAD_LETTER, routing_key=queue_name, headers=headers
    )
    # --8<-- [end:dead-letter]


# --8<-- [start:retry-later]
async def retry_later(
    broker: RabbitBroker,
    message: RabbitMessage,
    queue_name: str,
    delay: int,
    *,
    attempts: int,
    exception: BaseException,
    publisher: str | None = None,
) -> None:
    """Park ``message`` in the delay queue of ``delay`` seconds; it comes back to ``queue_name``."""
    headers = _failure_headers(
        message,
        queue_name,
        reason="retrying after a failure",
        exception=exception,
        attempts=attempts,
        publisher=publisher,
    )
    await _republish(
        broker,
        message,
        exchange=topology.retry_exchange(delay),
        routing_key=queue_name,
        headers=headers,
    )
    # --8<-- [end:retry-later]


async def undecoded(message: Any) -> bytes:
    """A FastStream decoder that leaves the body alone.

    FastStream would parse a body labelled ``application/json`` *before* the handler runs;
    bytes that are not even text raise there, outside the handler's try -- and the message
    stays unacked, filling the prefetch until the consumer stops. Warren decodes in
    :func:`shared.contracts.decode_event`, where every failure is poison with a reason.
    """
    return bytes(message.body)


# --8<-- [start:subscribe-events]
def subscribe_events(
    broker: RabbitBroker,
    consumer_queue: topology.ConsumerQueue,
    routes: Routes,
    *,
    retry_delays: tuple[int, ...],
    identity: Identity | None = None,
) -> None:
    """Consume ``consumer_queue`` with Warren's delivery rules, calling ``routes[type(event)]``.

    ``routes`` maps each event class the queue receives to its handler (the service's handler
    table, its dependencies bound). A handler must be idempotent: a message may arrive twice
    (redelivery after a crash, a replay from the DLQ). It returns the events to publish; they
    are published with confirms *before* the incoming message is acked, so a crash in between
    re-runs the handler, which re-emits the same events (same ids) rather than losing them.

    ``retry_delays`` is the service's backoff (settings.retry_delays_seconds). With an
    ``identity``, an event whose publisher is not the one service allowed to publish its type
    is poison (forged) -- but on an audit queue (``records_forgeries``) it is handed to the
    handler, whose :func:`current_provenance` says so.
    """
    consumer = EventConsumer(
        broker, consumer_queue, routes, retry_delays if consumer_queue.retried else (), identity
    )
    consume_settled(broker, consumer_queue, consumer.handle)
    # --8<-- [end:subscribe-events]


def consume_settled(
    broker: RabbitBroker,
    consumer_queue: topology.ConsumerQueue,
    handle: Callable[[RabbitMessage], Awaitable[None]],
) -> None:
    """Consume ``consumer_queue`` with ``handle``, which settles each message itself (acks it
    once its outcome is confirmed). Undecoded: ``handle`` decodes, so bad bytes are its poison."""

    @broker.subscriber(
        consumer_queue.queue,
        ack_policy=AckPolicy.MANUAL,
        decoder=undecoded,
        title=f"{consumer_queue.name}:consume",
    )
    async def consume(body: bytes) -> None:
        message = current_message(broker)
        try:
            await handle(message)
        except Exception as exc:
            # Even retrying or dead-lettering failed (the broker is going away, a confirm timed
            # out): hand the message back rather than leave it unacked. A reject counts towards
            # the quorum queue's delivery limit, so this cannot loop forever.
            log.error(
                "could not settle a message; requeueing it",
                queue=consumer_queue.name,
                error=repr(exc),
            )
            await message.reject(requeue=True)


def current_message(broker: RabbitBroker) -> RabbitMessage:
    """The message being handled, from FastStream's context. Not a handler parameter
    (``message: RabbitMessage``): FastStream resolves that through dependency injection, whose
    synchronous lookup runs in a worker thread -- a thread hop for every message
    (loadtests/hops.py measured it)."""
    message: RabbitMessage | None = broker.context.get_local("message")
    if message is None:
        raise RuntimeError("no message in FastStream's context: called outside a subscriber")
    return message


def route(
    routes: Routes, consumer_queue: topology.ConsumerQueue, body: bytes
) -> tuple[Envelope, EventData, EventHandler]:
    """Decode an event and find its handler. An event nobody handles here is poison: retrying
    cannot help, and it must not be acked away unseen."""
    envelope, payload = decode_event(body)
    handler = routes.get(type(payload))
    if handler is None:
        raise PoisonMessageError(
            f"no handler for {envelope.type} v{envelope.version} in {consumer_queue.name}"
        )
    return envelope, payload, handler


# --8<-- [start:verified-publisher]
@dataclass(frozen=True)
class Identity:
    """Who this consumer is on the broker, and whose copies it trusts."""

    user: str  # the broker user this service connects as
    operators: frozenset[str]  # the operator's users: they replay dead letters

    def made_the_copy(self, message: RabbitMessage) -> bool:
        """A copy that this consumer (a retry) or an operator (a replay) published."""
        user = message.raw_message.user_id or ""
        return user == self.user or user in self.operators

    def publisher(self, message: RabbitMessage) -> str:
        """Who published this message: its ``user_id``, which RabbitMQ has checked -- unless
        it is a copy that this consumer or an operator made, which carries the publisher of
        the original, as verified when it first arrived."""
        if self.made_the_copy(message):
            return str((message.headers or {}).get(H_PUBLISHER, ""))
        return message.raw_message.user_id or ""

    def verify(self, message: RabbitMessage, envelope: Envelope) -> tuple[str, str | None]:
        """The publisher, and why the event is forged (None: it came from the one service
        allowed to publish its type)."""
        publisher, allowed = self.publisher(message), topology.publisher_of(envelope.type)
        if publisher != allowed:
            return publisher, (
                f"forged: {envelope.type} is published by {allowed}, "
                f"this one by {publisher or 'an unknown publisher'}"
            )
        return publisher, None
        # --8<-- [end:verified-publisher]


# --8<-- [start:provenance]
VERIFIED = "verified"
UNVERIFIED = "unverified"  # the consumer connects as the operator: it cannot tell publishers apart


@dataclass(frozen=True)
class Provenance:
    """How the event being handled reached this consumer: who published it, whether that
    was verified (``verified``, ``forged: <reason>``, ``unverified``), by which routing key."""

    publisher: str
    verdict: str
    routing_key: str


_PROVENANCE: ContextVar[Provenance | None] = ContextVar("warren_provenance", default=None)


def current_provenance() -> Provenance | None:
    """The provenance of the event being handled: set by the broker consumer around each
    handler call (None elsewhere -- the in-memory bus, a test calling a handler). Handlers
    that act on events need none of it; the audit trail records it."""
    return _PROVENANCE.get()


@contextmanager
def _handling(provenance: Provenance) -> Iterator[None]:
    token = _PROVENANCE.set(provenance)
    try:
        yield
    finally:
        _PROVENANCE.reset(token)
        # --8<-- [end:provenance]


# --8<-- [start:handled-before]
_handled_before: ContextVar[bool] = ContextVar("warren_handled_before", default=False)


def handled_before() -> None:
    """Say, from a handler, that this message's effect was already done (a redelivery or a
    duplicate: the handler re-announces, and changes nothing). Its outcome is then counted as
    ``duplicate`` (warren_messages_total), not ``handled``: the duplicates each consumer skips."""
    _handled_before.set(True)
    # --8<-- [end:handled-before]


_held_since: ContextVar[datetime | None] = ContextVar("warren_held_since", default=None)


def held_since() -> datetime | None:
    """When the message being handled was first held back (its ``x-warren-held-since``); None
    if it never was. A handler that holds an early event back bounds the wait with it."""
    return _held_since.get()


def _held_since_header(message: RabbitMessage) -> datetime | None:
    try:
        return datetime.fromisoformat(str((message.headers or {})[H_HELD_SINCE]))
    except (KeyError, ValueError):
        return None


# --8<-- [start:event-consumer]
class EventConsumer:
    """One queue's delivery rules: decode, handle, publish what the handler returns, then ack.

    Poison goes to the DLQ at once; any other failure goes to the next delay queue, and to the
    DLQ once ``retry_delays`` are used up. The message is acked only after its outcome -- the
    events, the retry copy or the DLQ copy -- is confirmed by the broker.
    """

    def __init__(
        self,
        broker: RabbitBroker,
        consumer_queue: topology.ConsumerQueue,
        routes: Routes,
        retry_delays: tuple[int, ...],
        identity: Identity | None = None,
    ) -> None:
        self.broker, self.queue, self.routes = broker, consumer_queue, routes
        self.retry_delays, self.identity = retry_delays, identity

    async def handle(self, message: RabbitMessage) -> None:
        attempts = attempts_so_far(message) + 1
        started = time.perf_counter()
        try:
            envelope, payload, handler = route(self.routes, self.queue, message.body)
            provenance = self.provenance(message, envelope)
        except PoisonMessageError as exc:  # it cannot be read, nobody handles it, or forged
            bound = log.bind(queue=self.queue.name)
            ended = await self.failed(message, attempts, exc, bound, message.raw_message.user_id)
            await message.ack()
            # Its type is unverified (a forgery's, or none): not a label.
            self.measured(ended, "unknown", started)
            return
        bound = log.bind(
            queue=self.queue.name,
            event_type=envelope.type,
            event_id=envelope.id,
            order_id=envelope.correlation_id,
        )
        # The publisher a retry or dead-letter copy carries (none: nothing was verified).
        publisher = provenance.publisher if self.identity else None
        _handled_before.set(False)
        _held_since.set(_held_since_header(message))
        try:
            with order_context(envelope.correlation_id), _handling(provenance):
                outcome = await handler(envelope, payload)
                crash_point(f"{self.queue.name}:after-handler")
                for event in outcome:
                    await publish_event(self.broker, event)
        except Exception as exc:
            ended = await self.failed(message, attempts, exc, bound, publisher)
        else:
            ended = "duplicate" if _handled_before.get() else "handled"
            bound.info(ended, emitted=[event.type for event in outcome])
        await message.ack()  # only now: the events, or the retry or DLQ copy, are confirmed
        self.measured(ended, envelope.type, started)

    # --8<-- [start:measured]
    def measured(self, outcome: str, event_type: str, started: float) -> None:
        """Count how the message ended, and how long it took (warren_messages_total,
        warren_handler_duration_seconds)."""
        labels = {"queue": self.queue.name, "event_type": event_type}
        MESSAGES.add(1, {**labels, "outcome": outcome})
        HANDLER_DURATION.record(time.perf_counter() - started, labels)
        # --8<-- [end:measured]

    def provenance(self, message: RabbitMessage, envelope: Envelope) -> Provenance:
        """Who published the event, verified when this consumer has an identity. A forgery
        is poison -- except on an audit queue, whose handler records it with its verdict."""
        raw = message.raw_message
        if self.identity is None:
            return Provenance(raw.user_id or "", UNVERIFIED, _routing_key(message, copy=True))
        publisher, forged = self.identity.verify(message, envelope)
        if forged and not self.queue.records_forgeries:
            raise PoisonMessageError(forged)
        copy = self.identity.made_the_copy(message)
        return Provenance(publisher, forged or VERIFIED, _routing_key(message, copy=copy))

    async def failed(
        self,
        message: RabbitMessage,
        attempts: int,
        exc: Exception,
        bound: Any,
        publisher: str | None,
    ) -> str:
        """Park the message for its next attempt, or dead-letter it when none is left. Either
        copy says who published the original (``x-warren-publisher``). Returns which it was:
        ``poison``, ``dead_lettered``, ``retried``, ``pushed_back`` or ``held_back``."""
        if isinstance(exc, PoisonMessageError):
            # No retry can help: a message that cannot be read, or that no handler here takes,
            # or forged -- or one its handler found unusable (a customer id that makes no email
            # address). Dead-lettered at once, with its reason.
            bound.warning("poison message", reason=str(exc))
            await dead_letter(
                self.broker,
                message,
                self.queue.name,
                reason=f"poison: {exc}",
                exception=exc,
                attempts=attempts,
                publisher=publisher,
            )
            return "poison"
        if is_push_back(exc) and self.retry_delays:
            return await self.pushed_back(message, attempts, exc, bound, publisher)
        if isinstance(exc, HeldBackError) and self.retry_delays:
            await self.retry(message, min(self.retry_delays), attempts - 1, exc, publisher)
            bound.info("early: held back until its predecessor is handled", reason=str(exc))
            return "held_back"
        if attempts > len(self.retry_delays):
            bound.error("retries exhausted, dead-lettering", attempts=attempts, error=repr(exc))
            await dead_letter(
                self.broker,
                message,
                self.queue.name,
                reason="retries exhausted",
                exception=exc,
                attempts=attempts,
                publisher=publisher,
            )
            return "dead_lettered"
        delay = self.retry_delays[attempts - 1]
        await self.retry(message, delay, attempts, exc, publisher)
        bound.warning(
            "handler failed, will retry", attempt=attempts, delay_s=delay, error=repr(exc)
        )
        return "retried"
        # --8<-- [end:event-consumer]

    async def retry(
        self,
        message: RabbitMessage,
        delay: int,
        attempts: int,
        exc: Exception,
        publisher: str | None,
    ) -> None:
        """A copy of ``message`` in the delay queue of ``delay`` seconds, saying it has failed
        ``attempts`` times; it comes back to this queue."""
        await retry_later(
            self.broker,
            message,
            self.queue.name,
            delay,
            attempts=attempts,
            exception=exc,
            publisher=publisher,
        )

    # --8<-- [start:consumer-push-back]
    async def pushed_back(
        self,
        message: RabbitMessage,
        attempts: int,
        exc: Exception,
        bound: Any,
        publisher: str | None,
    ) -> str:
        """An event the handler emitted was refused: a queue it goes to is full. Not this
        message's fault, and no number of attempts is too many: it waits in a delay queue and
        comes back, without using one up, for as long as the queues after it are full."""
        delay = push_back_delay(self.retry_delays)
        await self.retry(message, delay, attempts - 1, exc, publisher)
        bound.warning("pushed back by a full queue, will retry", delay_s=delay)
        return "pushed_back"
        # --8<-- [end:consumer-push-back]


def push_back_delay(retry_delays: tuple[int, ...]) -> int:
    """How long a pushed-back message waits: the longest retry delay up to a minute (a queue
    drains in minutes, not seconds), or the shortest if all are longer."""
    return max((d for d in retry_delays if d <= 60), default=min(retry_delays))


def _routing_key(message: RabbitMessage, *, copy: bool) -> str:
    """The routing key the event came with: a trusted copy's says the original's."""
    original = (message.headers or {}).get(H_ROUTING_KEY) if copy else None
    return str(original or message.raw_message.routing_key or "")


def attempts_so_far(message: RabbitMessage) -> int:
    """How often this message failed before (its ``x-warren-attempts``; 0 if unreadable)."""
    try:
        return int((message.headers or {}).get(H_ATTEMPTS, 0))
    except (TypeError, ValueError):
        return 0
