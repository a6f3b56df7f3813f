"""The outbox relay: publishes events that were saved with ``outbox: "pending"``.

A service saves an event and its "to publish" mark in one single-document write, then hands
the event's key to :meth:`OutboxRelay.wake`. The relay publishes those events at once, by key
(cheap), with publisher confirms, and only then marks each one published. Every
``sweep_interval`` seconds it also sweeps for anything still pending, oldest first -- an event
whose wake-up was lost (the process died right after the write, the broker was down) still
goes out, after a restart if need be.

Delivery is at-least-once: a crash between the confirm and the mark publishes the event again
with the same id, and consumers are idempotent. Order is kept per order: after any failure the
relay publishes only through sweeps (oldest first, stopping at the first failure) until a sweep
gets through everything, so a later event never overtakes an earlier one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
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
        sweep_interval: float = 2.0,
        batch_size: int = 200,
    ) -> None:
        self.collection = collection
        self.publish = publish
        self.sweep_interval = sweep_interval
        self.batch_size = batch_size
        self._fresh: list[str] = []  # keys handed over by wake(), in write order
        self._degraded = False  # a publish failed: only sweeps until one gets through
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --8<-- [start:relay]
    def wake(self, keys: Sequence[str] = ()) -> None:
        """Publish these just-saved events now (and sweep, if no keys are given)."""
        self._fresh.extend(keys)
        self._wake.set()

    async def _publish(self, docs: list[dict[str, Any]]) -> int:
        # --8<-- [start:relay-span]
        for doc in docs:
            # Publish inside the trace the event was recorded in, as a visible relay step.
            token = otel_context.attach(propagate.extract(doc.get("trace_context") or {}))
            try:
                with _tracer.start_as_current_span(
                    f"outbox relay {doc.get('type', 'event')}",
                    kind=SpanKind.INTERNAL,
                    attributes={"messaging.message.id": str(doc.get("event_id", doc["_id"]))},
                ):
                    await self.publish(doc)
                    await self.collection.update_one(
                        {"_id": doc["_id"], "outbox": PENDING},
                        {"$set": {"outbox": PUBLISHED, "published_at": utcnow_iso()}},
                    )
            finally:
                otel_context.detach(token)
            # --8<-- [end:relay-span]
        return len(docs)

    async def publish_fresh(self) -> int:
        """Publish the events handed over by :meth:`wake`, by key, in the order written."""
        keys, self._fresh = self._fresh, []
        if not keys or self._degraded:
            return 0  # while degraded, the sweep publishes them, in order
        # The relay's own reads belong to no order's trace: keep them out of the traces.
        with suppress_instrumentation():
            found = {doc["_id"]: doc async for doc in self.collection.find({"_id": {"$in": keys}})}
        docs = [found[k] for k in keys if k in found and found[k].get("outbox") == PENDING]
        try:
            return await self._publish(docs)
        except Exception:
            self._degraded = True
            raise

    async def publish_pending(self) -> int:
        """Sweep: publish every pending event, oldest first. Returns how many went out.

        An event that fails holds back the later events of *its* order only; other orders go
        on. If anything failed, the relay stays on sweeps until one gets through everything.
        """
        published = 0
        held_back: set[str] = set()  # orders with an event that failed in this sweep
        cursor = (
            self.collection.find({"outbox": PENDING})
            .sort([("occurred_at", ASCENDING), ("_id", ASCENDING)])
            .limit(self.batch_size)
        )
        with suppress_instrumentation():
            batch = [doc async for doc in cursor]
        for doc in batch:
            if doc.get("order_id") in held_back:
                continue
            try:
                published += await self._publish([doc])
            except Exception as exc:
                held_back.add(doc.get("order_id", doc["_id"]))
                log.warning("outbox event not published", event_key=doc["_id"], error=repr(exc))
        self._degraded = bool(held_back) or len(batch) == self.batch_size
        return published

    async def run(self) -> None:
        next_sweep = time.monotonic()
        while True:
            timeout = max(0.0, next_sweep - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            self._wake.clear()
            try:
                await self.publish_fresh()
                if time.monotonic() >= next_sweep or self._degraded:
                    # Sweep on schedule; while degraded, keep sweeping (paced by the wake-ups
                    # and the schedule) until a sweep gets through everything.
                    next_sweep = time.monotonic() + self.sweep_interval
                    await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay failed; the next sweep retries", error=repr(exc))
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
