"""Request-reply over RabbitMQ's direct reply-to, with many requests in flight at once.

The caller publishes a request with ``reply_to = "amq.rabbitmq.reply-to"`` and a fresh
``correlation_id``; the responder (any FastStream subscriber that returns a value) publishes its
answer to that name, and RabbitMQ hands it straight to the caller's consumer -- no reply queue
is declared. One consumer per process receives every reply and completes the waiting request
whose ``correlation_id`` it carries.

Why not ``RabbitBroker.request``? FastStream's version takes a lock for the whole round trip
and opens and cancels a consumer for each request, so a process has *one* request in flight at
a time: under load every ``POST /orders`` queued behind the previous quote (measured: the API
topped out near 20 orders/s with the CPU half idle in front of it). Here requests share one
consumer and run concurrently.

Requests are transient (not persistent) and expire after the timeout: a request nobody took in
time is dropped by the broker, and the caller has given up on it anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError
from faststream.rabbit import RabbitBroker, RabbitResponse
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from shared.contracts import Contract
from shared.messaging import current_message, dead_letter, is_push_back, undecoded
from shared.metrics import RPC_DURATION
from shared.observability import current_trace_context
from shared.topology import ConsumerQueue

log = structlog.get_logger(__name__)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

Req = TypeVar("Req", bound=Contract)
Rep = TypeVar("Rep", bound=Contract)


class RpcUnavailableError(Exception):
    """No reply in time, or the broker connection is gone. ``outcome`` says which, in a word
    (timeout, full, unroutable, unavailable): the label of warren_rpc_duration_seconds."""

    def __init__(self, reason: str, *, outcome: str = "unavailable") -> None:
        super().__init__(reason)
        self.outcome = outcome


# --8<-- [start:rpc-client]
class RpcClient:
    def __init__(
        self, url: str, *, app_id: str, tracer_provider: trace.TracerProvider | None = None
    ) -> None:
        self.url = url
        self.app_id = app_id
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        # correlation id -> (the connection the request went out on, its reply to come)
        self._pending: dict[str, tuple[AbstractConnection, asyncio.Future[bytes]]] = {}
        self._connecting = asyncio.Lock()

    async def _ready(self) -> tuple[AbstractConnection, AbstractChannel]:
        """The connection and channel that publish requests and take replies, opened on demand."""
        async with self._connecting:
            if self._connection is None or self._channel is None or self._channel.is_closed:
                # Start from a new connection: after a broker restart the old one may still
                # look open while it is not.
                await self._disconnect()
                connection = await aio_pika.connect(self.url, timeout=5)
                connection.close_callbacks.add(lambda *_: self._lost(connection))
                # Confirmed and mandatory: a request no queue takes fails now, not at the timeout.
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                channel.close_callbacks.add(lambda *_: self._lost(connection))
                # Direct reply-to: consume the pseudo-queue, without acks, on the same channel
                # that publishes the requests.
                replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)
                await replies.consume(self._on_reply, no_ack=True)
                self._connection, self._channel = connection, channel
            return self._connection, self._channel

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        _, waiting = self._pending.pop(message.correlation_id or "", (None, None))
        if waiting is not None and not waiting.done():
            waiting.set_result(message.body)
        # else: a late reply to a request that already timed out -- nobody wants it.

    def _lost(self, connection: AbstractConnection) -> None:
        """``connection`` (or its channel) is gone: its waiting requests get no reply now."""
        if self._connection is connection:
            self._channel = None  # the next request reconnects
        for correlation_id, (owner, waiting) in list(self._pending.items()):
            if owner is connection:
                del self._pending[correlation_id]
                if not waiting.done():
                    waiting.set_exception(RpcUnavailableError("broker connection lost"))

    async def _disconnect(self) -> None:
        """Close the current connection, if any; requests still waiting on it fail now."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            self._lost(connection)
            with contextlib.suppress(Exception):
                await connection.close()

    async def request(self, queue: str, body: dict[str, Any], *, timeout: float) -> bytes:
        """Send ``body`` to ``queue`` and return the reply's body; raises RpcUnavailableError.
        Each call is timed, by outcome (warren_rpc_duration_seconds)."""
        started, outcome = time.perf_counter(), "error"  # cancelled, or a bug
        try:
            reply = await self._call(queue, body, timeout)
            outcome = "ok"
            return reply
        except RpcUnavailableError as exc:
            outcome = exc.outcome
            raise
        finally:
            RPC_DURATION.record(time.perf_counter() - started, {"queue": queue, "outcome": outcome})

    def _message(
        self, body: dict[str, Any], correlation_id: str, timeout: float, headers: dict[str, Any]
    ) -> aio_pika.Message:
        return aio_pika.Message(
            json.dumps(body).encode(),
            content_type="application/json",
            correlation_id=correlation_id,
            reply_to=DIRECT_REPLY_TO,
            expiration=timeout,  # nobody took it in time: the broker drops it
            app_id=self.app_id,
            headers=headers,
        )

    async def _call(self, queue: str, body: dict[str, Any], timeout: float) -> bytes:
        correlation_id = str(uuid.uuid4())
        with self._tracer.start_as_current_span(
            f"default.{queue} request",
            kind=SpanKind.CLIENT,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.destination.name": queue,
                "messaging.operation.type": "send",
                "messaging.message.conversation_id": correlation_id,
            },
        ) as span:
            headers = current_trace_context()  # trace context and baggage, as every message
            reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            connection: AbstractConnection | None = None
            try:
                async with asyncio.timeout(timeout):
                    connection, channel = await self._ready()
                    self._pending[correlation_id] = (connection, reply)
                    request = self._message(body, correlation_id, timeout, headers)
                    await channel.default_exchange.publish(
                        request, routing_key=queue, mandatory=True
                    )
                    return await reply
            except TimeoutError as exc:
                span.set_status(StatusCode.ERROR, "timeout")
                reason = f"no reply from {queue} within {timeout:g}s"
                raise RpcUnavailableError(reason, outcome="timeout") from exc
            except DeliveryError as exc:
                # Refused at once: the queue is at its length limit, or there is no queue.
                outcome = "full" if is_push_back(exc) else "unroutable"
                span.set_status(StatusCode.ERROR, outcome)
                reason = {
                    "full": f"{queue} is full; too many waiting",
                    "unroutable": f"no queue {queue} to take the request",
                }[outcome]
                raise RpcUnavailableError(reason, outcome=outcome) from exc
            except (
                AMQPError,
                ChannelInvalidStateError,
                ConnectionError,
                OSError,
                RuntimeError,
            ) as exc:
                # The connection is broken (aio-pika raises RuntimeError for one it found
                # closed): its other requests are lost too, and the next one reconnects.
                span.set_status(StatusCode.ERROR, type(exc).__name__)
                if connection is not None:
                    self._lost(connection)
                raise RpcUnavailableError(f"broker unavailable ({type(exc).__name__})") from exc
            finally:
                self._pending.pop(correlation_id, None)
                if reply.done() and not reply.cancelled():
                    reply.exception()  # failed by _lost while we published: mark it seen
        # --8<-- [end:rpc-client]

    async def close(self) -> None:
        await self._disconnect()


# --8<-- [start:serve-requests]
def serve_requests(
    broker: RabbitBroker,
    consumer_queue: ConsumerQueue,
    request_model: type[Req],
    answer: Callable[[Req], Awaitable[Contract]],
) -> None:
    """Answer requests on ``consumer_queue``: FastStream sends the return value to the
    caller's reply-to queue.

    A request that cannot be read gets the reason at once (rather than a timeout), and a copy
    goes to the queue's DLQ, so that the bad request is seen, not just logged.
    """

    @broker.subscriber(consumer_queue.queue, decoder=undecoded)
    async def respond(body: bytes) -> RabbitResponse:
        message = current_message(broker)
        try:
            request = request_model.model_validate_json(message.body)
        except ValueError as exc:
            reason = f"poison: {' | '.join(str(exc).splitlines())[:500]}"
            log.warning("poison request", queue=consumer_queue.name, reason=reason)
            await dead_letter(
                broker, message, consumer_queue.name, reason=reason, exception=exc, attempts=1
            )
            return RabbitResponse({"error": reason}, mandatory=False)
        # Not mandatory: RabbitMQ 3.10 answers a mandatory publish to a direct reply-to
        # pseudo-queue with NO_ROUTE even though it delivers it.
        return RabbitResponse((await answer(request)).model_dump(mode="json"), mandatory=False)
        # --8<-- [end:serve-requests]


# --8<-- [start:ask]
class RequestClient(Generic[Req, Rep]):
    """A typed request-reply call: ``await client(request)`` returns the typed reply, or raises
    ``unavailable`` when no reply came in time (or the broker is unreachable)."""

    def __init__(
        self,
        rpc: RpcClient,
        queue: ConsumerQueue,
        reply_model: type[Rep],
        *,
        timeout: float,
        unavailable: type[Exception] = RpcUnavailableError,
    ) -> None:
        self.rpc, self.queue, self.reply_model = rpc, queue, reply_model
        self.timeout, self.unavailable = timeout, unavailable

    async def __call__(self, request: Req) -> Rep:
        try:
            reply = await self.rpc.request(
                self.queue.name, request.model_dump(mode="json"), timeout=self.timeout
            )
        except RpcUnavailableError as exc:
            raise self.unavailable(str(exc)) from exc
        return self.reply_model.model_validate_json(reply)
        # --8<-- [end:ask]
