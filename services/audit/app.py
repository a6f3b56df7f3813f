"""Build the audit service: settings -> deps -> handler table -> app.

Its handler records every event on shop.events (``audit.events``); beside the table, a
consumer records the broker's own security events (``audit.broker-events``), bound to the
broker's event exchange at start-up when the broker has one.
"""

from __future__ import annotations

import functools

from starlette.applications import Starlette

from services.audit.broker_events import (
    BrokerEventConsumer,
    bind_broker_events,
    subscribe_broker_events,
)
from services.audit.handlers import HANDLERS, AuditDeps
from services.audit.repository import AuditTrail
from services.audit.settings import AuditSettings
from shared.service import Lifecycle, bootstrap, service_app


def create_app(settings: AuditSettings | None = None) -> Starlette:
    settings = settings or AuditSettings()
    runtime = bootstrap(settings)
    trail = AuditTrail(runtime.db)
    runtime.serve(HANDLERS, AuditDeps(trail))
    broker_events = BrokerEventConsumer(
        runtime.broker,
        trail,
        retry_delays=settings.retry_delays_seconds,
        # Copies it trusts: its own retries, an operator's replays.
        trusted=frozenset({settings.broker_user, *settings.broker_operators}),
    )
    subscribe_broker_events(runtime.broker, broker_events)
    return service_app(
        runtime,
        Lifecycle(
            on_startup=[
                trail.create_indexes,
                functools.partial(bind_broker_events, settings.rabbit_url),
            ]
        ),
    )
