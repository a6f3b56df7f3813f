"""Build the notification service: subscribes to order events, enqueues Celery email tasks."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor

import structlog
from faststream.asgi import AsgiFastStream
from opentelemetry.instrumentation.utils import suppress_instrumentation

from services.notification import handlers
from services.notification.repository import NotificationRepository
from services.notification.settings import NotificationSettings
from services.notification.worker import TASK_NAME, make_celery
from shared import topology
from shared.clock import DatabaseClock
from shared.contracts import Envelope, EventData
from shared.service import bootstrap, make_service_app

ENQUEUE_TIMEOUT_SECONDS = 10.0
log = structlog.get_logger(__name__)


def create_app(settings: NotificationSettings | None = None) -> AsgiFastStream:
    settings = settings or NotificationSettings()
    runtime = bootstrap(settings)
    clock = DatabaseClock()  # the sweeper's clock, and the email worker's: the database's
    repo = NotificationRepository(runtime.db, clock)
    celery = make_celery(settings)
    # Celery's client is blocking: one thread publishes tasks, off the event loop.
    celery_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-publish")

    # --8<-- [start:celery-caller]
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()

    async def enqueue(notification_id: str) -> None:
        # Run in the current context (trace, baggage): run_in_executor would not carry it over.
        context = contextvars.copy_context()
        publish = asyncio.get_running_loop().run_in_executor(
            celery_thread,
            functools.partial(context.run, celery.send_task, TASK_NAME, args=[notification_id]),
        )
        # Bounded: a broker that never confirms fails this message (retried), not the service.
        await asyncio.wait_for(publish, timeout=ENQUEUE_TIMEOUT_SECONDS)
        # --8<-- [end:celery-caller]

    async def on_order_event(envelope: Envelope, payload: EventData) -> list[Envelope]:
        return await handlers.notify_customer(
            envelope, payload, repo, enqueue, mail_domain=settings.customer_mail_domain
        )

    runtime.subscribe(topology.NOTIFICATION_ORDER_EVENTS, on_order_event)

    # --8<-- [start:sweeper]
    async def sweep_stuck_notifications() -> None:
        """Re-enqueue emails whose task was lost (a worker killed mid-send, a task that
        failed before giving its claim back). The task's claim rules keep it to one email."""
        while True:
            try:
                with suppress_instrumentation():
                    stuck = await repo.stuck(stale_claim_seconds=settings.stale_claim_seconds)
                for notification_id in stuck:
                    await enqueue(notification_id)
                if stuck:
                    await repo.touched(stuck)
                    log.warning("re-enqueued stuck notifications", count=len(stuck))
            except Exception as exc:  # the database or the broker is away: next round
                log.warning("notification sweep failed", error=repr(exc))
            await asyncio.sleep(settings.sweep_seconds)
            # --8<-- [end:sweeper]

    tasks: list[asyncio.Task[None]] = []

    async def startup() -> None:
        await clock.sync(runtime.client)
        tasks.append(asyncio.create_task(sweep_stuck_notifications(), name="email-sweeper"))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        celery_thread.shutdown(wait=True)

    return make_service_app(runtime, on_startup=startup, on_shutdown=shutdown)
