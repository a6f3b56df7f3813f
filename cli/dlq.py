"""``warren dlq``: list, show, replay and purge dead-lettered messages.

Every consumer queue ``Q`` has a dead-letter queue ``Q.dlq``. A message lands there when its
handler gave up (poison, or retries exhausted: ``x-warren-*`` headers say why) or when the
broker dead-lettered it (``x-death``: delivery limit reached, rejected). Replaying publishes it
back to ``Q`` through ``shop.requeue`` with the same message id, correlation id and trace
headers, and a fresh retry budget.

Uses aio-pika directly: this is broker tooling, below the level of FastStream's handlers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aio_pika
import typer
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from rich.console import Console
from rich.table import Table

from shared import topology
from shared.clock import utcnow_iso
from shared.messaging import (
    H_ATTEMPTS,
    H_DEAD_LETTERED_AT,
    H_ORIGINAL_QUEUE,
    H_PUBLISHER,
    H_REASON,
    copy_headers,
)
from shared.observability import current_trace_context
from shared.settings import WarrenSettings

app = typer.Typer(help="Dead-letter queues: list, show, replay, purge.", no_args_is_help=True)
console = Console()
_tracer = trace.get_tracer(__name__)

H_REPLAYED_AT = "x-warren-replayed-at"
H_ORIGINAL_TRACEPARENT = "x-warren-original-traceparent"
H_REPLAY_COUNT = "x-warren-replay-count"


def _consumer_queue(name: str) -> topology.ConsumerQueue:
    """Accept ``inventory.order-placed`` or ``inventory.order-placed.dlq``."""
    try:
        return topology.queue_by_name(name.removesuffix(".dlq"))
    except KeyError:
        known = ", ".join(q.name for q in topology.ALL_QUEUES_WITH_DLQ)
        raise typer.BadParameter(f"unknown queue {name!r}; known: {known}") from None


@asynccontextmanager
async def _channel(rabbit_url: str | None = None) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(rabbit_url or WarrenSettings().rabbit_url)
    async with connection:
        # A replay to a queue that no longer exists must fail, not ack the dead letter away.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        yield channel


def _reason(message: AbstractIncomingMessage) -> str:
    """Why it is here: Warren's own reason if Warren dead-lettered it, else the broker's."""
    headers = message.headers or {}
    if H_DEAD_LETTERED_AT in headers:
        return str(headers.get(H_REASON, "unknown"))
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths:
        latest = deaths[0]  # the broker puts the most recent death first
        return f"broker: {latest.get('reason')} (from {latest.get('queue')})"
    return str(headers.get(H_REASON, "unknown"))


def _message_id(message: AbstractIncomingMessage) -> str:
    """The AMQP message id; Celery tasks carry theirs in the ``id`` header instead."""
    return message.message_id or str((message.headers or {}).get("id", ""))


def _original_queue(message: AbstractIncomingMessage, fallback: str) -> str:
    headers = message.headers or {}
    if H_ORIGINAL_QUEUE in headers:
        return str(headers[H_ORIGINAL_QUEUE])
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and deaths[0].get("queue"):
        return str(deaths[0]["queue"])
    return fallback


# --8<-- [start:replay-span]
@contextmanager
def _replay_span(
    headers: dict[str, Any], queue_name: str, message: AbstractIncomingMessage
) -> Iterator[None]:
    """A replay starts a new trace that *links* to the message's original trace.

    The original ``traceparent`` is kept as ``x-warren-original-traceparent``; the replayed
    copy carries the replay's own context, so its processing shows up under the replay.
    """
    original = propagate.extract({k: str(v) for k, v in headers.items() if isinstance(v, str)})
    original_span = trace.get_current_span(original).get_span_context()
    if "traceparent" in headers:
        headers[H_ORIGINAL_TRACEPARENT] = headers.pop("traceparent")
    links = [trace.Link(original_span)] if original_span.is_valid else []
    attributes = {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": queue_name,
        "messaging.message.id": _message_id(message),
    }
    if message.correlation_id and "task" not in headers:  # a Celery task's is its task id
        attributes["order.id"] = message.correlation_id
    with _tracer.start_as_current_span(
        f"dlq replay {queue_name}", context=Context(), links=links, attributes=attributes
    ):
        headers.update(current_trace_context())
        yield
        # --8<-- [end:replay-span]


async def _take(
    channel: AbstractChannel, dlq_name: str, limit: int
) -> list[AbstractIncomingMessage]:
    """Take up to ``limit`` messages without acking (they return when the channel closes)."""
    queue = await channel.get_queue(dlq_name, ensure=False)
    taken: list[AbstractIncomingMessage] = []
    while len(taken) < limit:
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        taken.append(message)
    return taken


async def list_counts(rabbit_url: str | None = None) -> list[tuple[str, int, int]]:
    """(queue, ready messages in the queue, messages in its DLQ) for every consumer queue."""
    rows = []
    async with _channel(rabbit_url) as channel:
        for consumer_queue in topology.ALL_QUEUES_WITH_DLQ:
            main = await channel.declare_queue(consumer_queue.name, passive=True)
            dead = await channel.declare_queue(consumer_queue.dlq_name, passive=True)
            rows.append(
                (
                    consumer_queue.name,
                    main.declaration_result.message_count,
                    dead.declaration_result.message_count,
                )
            )
    return rows


async def show_messages(queue_name: str, limit: int) -> list[dict[str, Any]]:
    consumer_queue = _consumer_queue(queue_name)
    async with _channel() as channel:
        taken = await _take(channel, consumer_queue.dlq_name, limit)
        shown = [
            {
                "message_id": _message_id(m),
                "correlation_id": m.correlation_id,
                "type": m.type,
                "reason": _reason(m),
                "headers": {k: v for k, v in (m.headers or {}).items() if k != "x-death"},
                "x-death": (m.headers or {}).get("x-death"),
                "body": m.body.decode(errors="replace"),
            }
            for m in taken
        ]
        for message in taken:
            await message.nack(requeue=True)
    return shown


def persistent_copy(
    message: AbstractIncomingMessage, headers: dict[str, Any], *, operator: str
) -> aio_pika.Message:
    """The same message -- body, id, correlation id, type -- with these headers, persistent.

    The copy is published by the ``operator`` (the user this connection is, which RabbitMQ
    checks against ``user_id``): it says who published the original (``x-warren-publisher``),
    the user RabbitMQ checked then, unless an earlier copy said it already. A consumer with a
    broker user of its own trusts that header on an operator's copy, and only there.
    """
    if H_PUBLISHER not in headers and message.user_id:
        headers = {**headers, H_PUBLISHER: message.user_id}
    return aio_pika.Message(
        message.body,
        user_id=operator,
        headers=headers,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        content_type=message.content_type,
        type=message.type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def replay_messages(queue_name: str, message_id: str | None) -> int:
    """Publish dead-lettered messages back to their queue (all, or the one with ``message_id``)."""
    consumer_queue = _consumer_queue(queue_name)
    replayed = 0
    async with _channel() as channel:
        requeue = await channel.get_exchange(topology.REQUEUE.name, ensure=False)
        dlq = await channel.declare_queue(consumer_queue.dlq_name, passive=True)
        taken = await _take(channel, consumer_queue.dlq_name, dlq.declaration_result.message_count)
        for message in taken:
            if message_id is not None and _message_id(message) != message_id:
                await message.nack(requeue=True)
                continue
            # Without x-death: RabbitMQ 3.x would drop the copy at its next dead-lettering.
            headers = copy_headers(message.headers)
            headers[H_ATTEMPTS] = 0  # a fresh retry budget
            headers[H_REPLAYED_AT] = utcnow_iso()
            headers[H_REPLAY_COUNT] = int(headers.get(H_REPLAY_COUNT, 0)) + 1
            with _replay_span(headers, consumer_queue.name, message):
                await requeue.publish(
                    persistent_copy(message, headers, operator=WarrenSettings().broker_user),
                    routing_key=_original_queue(message, consumer_queue.name),
                    mandatory=True,
                )
            await message.ack()  # only after the broker confirmed the copy
            replayed += 1
    return replayed


async def purge_queue(queue_name: str, rabbit_url: str | None = None) -> int:
    consumer_queue = _consumer_queue(queue_name)
    async with _channel(rabbit_url) as channel:
        queue = await channel.declare_queue(consumer_queue.dlq_name, passive=True)
        result = await queue.purge()
        return int(result.message_count or 0)


@app.command("list")
def list_command() -> None:
    """Every consumer queue with its ready messages and its dead letters."""
    table = Table("queue", "ready", "dead letters", title="Warren queues")
    for name, ready, dead in asyncio.run(list_counts()):
        table.add_row(name, str(ready), f"[red]{dead}[/]" if dead else "0")
    console.print(table)


@app.command("show")
def show_command(
    queue: str = typer.Argument(..., help="Consumer queue (or its .dlq)."),
    limit: int = typer.Option(10, min=1, help="How many messages to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show dead-lettered messages with their headers (they stay in the DLQ)."""
    messages = asyncio.run(show_messages(queue, limit))
    if as_json:
        console.print_json(json.dumps(messages, default=str))
        return
    if not messages:
        console.print(f"{_consumer_queue(queue).dlq_name} is empty")
        return
    for message in messages:
        console.rule(f"{message['type']}  {message['message_id']}")
        console.print(f"[bold]reason[/]  {message['reason']}")
        for key, value in sorted(message["headers"].items()):
            console.print(f"  {key}: {value}")
        console.print(f"[dim]{message['body'][:2000]}[/]")


@app.command("replay")
def replay_command(
    queue: str = typer.Argument(..., help="Consumer queue (or its .dlq)."),
    message_id: str | None = typer.Option(None, "--id", help="Replay only this message."),
    replay_all: bool = typer.Option(False, "--all", help="Replay every message in the DLQ."),
) -> None:
    """Send dead letters back to their queue, keeping message id and trace headers."""
    if (message_id is None) == (not replay_all):
        raise typer.BadParameter("give either --id MESSAGE_ID or --all")
    count = asyncio.run(replay_messages(queue, message_id))
    console.print(f"replayed {count} message(s) to {_consumer_queue(queue).name}")
    if message_id is not None and count == 0:
        raise typer.Exit(1)


@app.command("purge")
def purge_command(
    queue: str = typer.Argument(..., help="Consumer queue (or its .dlq)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete every message in a DLQ (asks first)."""
    name = _consumer_queue(queue).dlq_name
    if not yes:
        typer.confirm(f"Delete every message in {name}?", abort=True)
    console.print(f"purged {asyncio.run(purge_queue(queue))} message(s) from {name}")
