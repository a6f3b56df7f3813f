"""Build the notification service: subscribes to order events, enqueues Celery email tasks."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor

from faststream.asgi import AsgiFastStream

from services.notification import handlers
from services.notification.repository import NotificationRepository
from services.notification.settings import NotificationSettings
from services.notification.worker import TASK_NAME, make_celery
from shared import topology
from shared.contracts import Envelope, EventData
from shared.service import bootstrap, make_service_app

ENQUEUE_TIMEOUT_SECONDS = 10.0


def create_app(settings: NotificationSettings | None = None) -> AsgiFastStream:
    settings = settings or NotificationSettings()
    runtime = bootstrap(settings)
    repo = NotificationRepository(runtime.db)
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

    async def shutdown() -> None:
        celery_thread.shutdown(wait=True)

    return make_service_app(runtime, on_shutdown=shutdown)
