"""Build the notification service: settings -> deps -> handler table -> app.

Its handler records each email and hands it to the Celery workers
(``services.notification.worker``), which send it over SMTP.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette

from services.notification.delivery import EmailTasks, sweep_stuck_notifications
from services.notification.handlers import HANDLERS, NotificationDeps
from services.notification.repository import NotificationRepository
from services.notification.settings import NotificationSettings
from services.notification.worker import make_celery
from shared import topology
from shared.clock import DatabaseClock
from shared.metrics import Sampled, email_counters
from shared.periodic import every
from shared.service import Lifecycle, bootstrap, service_app


async def keep_routed(route: Callable[[], Awaitable[None]], *, every_seconds: float) -> None:
    """Route the order events again, every ``every_seconds``. The definitions bind the single
    queue: a `warren topology provision`, the compose broker's next boot, or a service that
    declares the whole topology binds it again while this one takes the partitions. Until this
    puts it right, events go both ways: the second copy finds its email recorded (a duplicate,
    counted), nothing is sent twice."""
    await every(every_seconds, route, what="route the order events", wait_first=True)


def create_app(settings: NotificationSettings | None = None) -> Starlette:
    settings = settings or NotificationSettings()
    runtime = bootstrap(settings)
    clock = DatabaseClock()  # the sweeper's clock, and the email worker's: the database's
    repo = NotificationRepository(runtime.db, clock)
    tasks = EmailTasks(make_celery(settings))
    deps = NotificationDeps(
        notifications=repo,
        enqueue=tasks.enqueue,
        mail_domain=settings.customer_mail_domain,
        order_wait_seconds=settings.order_wait_seconds,
    )
    runtime.serve(HANDLERS, deps)
    sweeper = functools.partial(
        sweep_stuck_notifications,
        repo,
        tasks,
        stale_claim_seconds=settings.stale_claim_seconds,
        every=settings.sweep_seconds,
    )
    # Emails sent, failed and queued, from the notifications' states (warren_emails_total...).
    emails = Sampled(repo.counts)
    email_counters(emails)
    # Its order events: through one queue, or through partitions by order id.
    route_order_events = functools.partial(
        topology.route_events,
        runtime.broker,
        topology.NOTIFICATION_ORDER_EVENTS,
        topology.NOTIFICATION_ORDER_PARTITIONS,
        partitions=settings.order_events_via == "partitions",
    )
    keep_routing = functools.partial(
        keep_routed, route_order_events, every_seconds=settings.order_events_route_check_seconds
    )
    return service_app(
        runtime,
        Lifecycle(
            on_startup=[functools.partial(clock.sync, runtime.client), route_order_events],
            background=[sweeper, emails.run, keep_routing],
            on_shutdown=[tasks.close],
        ),
    )
