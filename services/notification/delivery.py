"""How notification hands emails to its Celery workers: now, and again if a task was lost."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor

import structlog
from celery import Celery
from opentelemetry.instrumentation.utils import suppress_instrumentation

from services.notification.repository import NotificationRepository
from services.notification.worker import TASK_NAME

ENQUEUE_TIMEOUT_SECONDS = 10.0
log = structlog.get_logger(__name__)


# --8<-- [start:celery-caller]
class EmailTasks:
    """Enqueues ``notification.send_email`` tasks. Celery's client is blocking: one thread
    publishes them, off the event loop."""

    def __init__(self, celery: Celery) -> None:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()  # the task joins the trace of the event behind it
        self.celery = celery
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-publish")

    async def enqueue(self, notification_id: str) -> None:
        # Run in the current context (trace, baggage): run_in_executor would not carry it over.
        context = contextvars.copy_context()
        publish = asyncio.get_running_loop().run_in_executor(
            self._thread,
            functools.partial(
                context.run, self.celery.send_task, TASK_NAME, args=[notification_id]
            ),
        )
        # Bounded: a broker that never confirms fails this message (retried), not the service.
        await asyncio.wait_for(publish, timeout=ENQUEUE_TIMEOUT_SECONDS)
        # --8<-- [end:celery-caller]

    async def close(self) -> None:
        self._thread.shutdown(wait=True)


# --8<-- [start:sweeper]
async def sweep_stuck_notifications(
    repo: NotificationRepository, tasks: EmailTasks, *, stale_claim_seconds: float, every: float
) -> None:
    """Re-enqueue emails whose task was lost (a worker killed mid-send, a task that failed
    before giving its claim back). The task's claim rules keep it to one email."""
    while True:
        try:
            with suppress_instrumentation():
                stuck = await repo.stuck(stale_claim_seconds=stale_claim_seconds)
            for notification_id in stuck:
                await tasks.enqueue(notification_id)
            if stuck:
                await repo.touched(stuck)
                log.warning("re-enqueued stuck notifications", count=len(stuck))
        except Exception as exc:  # the database or the broker is away: next round
            log.warning("notification sweep failed", error=repr(exc))
        await asyncio.sleep(every)
        # --8<-- [end:sweeper]
