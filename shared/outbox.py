"""The outbox relay: publishes events that were saved with ``outbox: "pending"``.

A service saves an event and its "to publish" mark in one single-document write, then hands
the saved document to :meth:`OutboxRelay.wake`. The relay publishes those events at once, with
publisher confirms, and only then marks them published (one write per batch). Every
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
        self._fresh: list[dict[str, Any]] = []  # handed over by wake(), in write order
        self._degraded = False  # a publish failed: only sweeps until one gets through
        self._swept: set[str] = set()  # what the last sweep found
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --8<-- [start:relay]
    def wake(self, docs: Sequence[dict[str, Any]] = ()) -> None:
        """Publish these just-saved events now (and sweep, if none are given).

        The caller hands over the documents it has just written, so the relay need not read
        them back.
        """
        self._fresh.extend(docs)
        self._wake.set()

    async def _publish_in_order(self, docs: list[dict[str, Any]], done: list[str]) -> None:
        for doc in docs:
            # --8<-- [start:relay-span]
            # Publish inside the trace the event was recorded in, as a visible relay step.
            token = otel_context.attach(propagate.extract(doc.get("trace_context") or {}))
            try:
                with _tracer.start_as_current_span(
                    f"outbox relay {doc.get('type', 'event')}",
                    kind=SpanKind.INTERNAL,
                    attributes={"messaging.message.id": str(doc.get("event_id", doc["_id"]))},
                ):
                    await self.publish(doc)
            finally:
                otel_context.detach(token)
            # --8<-- [end:relay-span]
            done.append(doc["_id"])

    async def _publish(self, docs: list[dict[str, Any]]) -> int:
        """Publish ``docs`` (in order within each order, orders side by side), then mark them.

        One ``update_many`` marks the whole batch published: under load a batch holds many
        events, and the database sees one write instead of one per event.
        """
        by_order: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            by_order.setdefault(doc.get("order_id", doc["_id"]), []).append(doc)
        done: list[str] = []
        try:
            results = await asyncio.gather(
                *(self._publish_in_order(group, done) for group in by_order.values()),
                return_exceptions=True,
            )
        finally:
            if done:
                # Marked only after the confirms: a crash before this publishes them again.
                with suppress_instrumentation():
                    await self.collection.update_many(
                        {"_id": {"$in": done}, "outbox": PENDING},
                        {"$set": {"outbox": PUBLISHED, "published_at": utcnow_iso()}},
                    )
        failures = [result for result in results if isinstance(result, BaseException)]
        for failure in failures[1:]:
            log.warning("outbox event not published", error=repr(failure))
        if failures:
            raise failures[0]
        return len(done)

    async def publish_fresh(self) -> int:
        """Publish the events handed over by :meth:`wake`, in the order written."""
        docs, self._fresh = self._fresh, []
        # Saved and swept before it was handed over (a slow multi-event append): done already.
        docs = [doc for doc in docs if doc["_id"] not in self._swept]
        if not docs or self._degraded:
            return 0  # while degraded, the sweep publishes them, in order
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
        # An event saved while this sweep ran may be both swept and handed over: publish once.
        # (The ids are kept until the next sweep, for a hand-over that comes later still.)
        self._swept = {doc["_id"] for doc in batch}
        self._fresh = [doc for doc in self._fresh if doc["_id"] not in self._swept]
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
