"""The outbox relay: publishes events that were saved with ``outbox: "pending"``.

A service saves an event and its "to publish" mark in one single-document write, then
:meth:`OutboxRelay.wake` s the relay. The relay publishes pending events with publisher
confirms, oldest first, and only then marks each one published. It also sweeps every
``sweep_interval`` seconds, so an event whose wake-up was lost (the process died right after
the write, the broker was down) still goes out after a restart.

Delivery is at-least-once: a crash between the confirm and the mark publishes the event again
with the same id, and consumers are idempotent. Within a sweep, a failure stops the sweep, so
an order's later event is never published before an earlier one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from shared.clock import utcnow_iso

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)

PENDING = "pending"
PUBLISHED = "published"

PublishFn = Callable[[dict[str, Any]], Awaitable[None]]


def current_trace_context() -> dict[str, str]:
    """The active trace context as W3C headers, to store beside an event."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class OutboxRelay:
    def __init__(
        self,
        collection: AsyncCollection,
        publish: PublishFn,
        *,
        sweep_interval: float = 1.0,
        batch_size: int = 200,
    ) -> None:
        self.collection = collection
        self.publish = publish
        self.sweep_interval = sweep_interval
        self.batch_size = batch_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --8<-- [start:relay]
    def wake(self) -> None:
        """Ask for a sweep now (cheap; call after every write that adds pending events)."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish pending events, oldest first. Returns how many went out."""
        published = 0
        while True:
            cursor = (
                self.collection.find({"outbox": PENDING})
                .sort([("occurred_at", ASCENDING), ("version", ASCENDING)])
                .limit(self.batch_size)
            )
            batch = [doc async for doc in cursor]
            for doc in batch:
                # Publish inside the trace the event was recorded in, as a visible relay step.
                token = otel_context.attach(propagate.extract(doc.get("trace_context") or {}))
                try:
                    with _tracer.start_as_current_span(
                        f"outbox relay {doc.get('type', 'event')}",
                        kind=SpanKind.INTERNAL,
                        attributes={"messaging.message.id": str(doc["_id"])},
                    ):
                        await self.publish(doc)
                finally:
                    otel_context.detach(token)
                await self.collection.update_one(
                    {"_id": doc["_id"], "outbox": PENDING},
                    {"$set": {"outbox": PUBLISHED, "published_at": utcnow_iso()}},
                )
                published += 1
            if len(batch) < self.batch_size:
                return published

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.sweep_interval)
            self._wake.clear()
            try:
                await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox sweep failed; will retry", error=repr(exc))
        # --8<-- [end:relay]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
