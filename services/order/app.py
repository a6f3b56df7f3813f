"""Build the order service: settings -> deps -> handler table -> app (FastAPI and FastStream
in one process: the HTTP API, the saga's consumer, the outbox relay, the deadline sweep)."""

from __future__ import annotations

import functools

from fastapi import FastAPI

from services.order import api, handlers
from services.order.handlers import HANDLERS, OrderDeps, QuoteUnavailableError
from services.order.repository import EventStore, IdempotencyKeys, OrderViews
from services.order.settings import OrderSettings
from shared import topology
from shared.clock import DatabaseClock
from shared.contracts import Quote, QuoteRequest
from shared.metrics import Sampled, outbox_gauges
from shared.outbox import OutboxRelay, broker_publisher, outbox_stats, replica_id
from shared.rpc import RequestClient, RpcClient
from shared.service import Lifecycle, bootstrap, lifespan


def create_app(settings: OrderSettings | None = None) -> FastAPI:
    settings = settings or OrderSettings()
    runtime = bootstrap(settings)
    # Each replica publishes the events it saves; the others adopt them if it dies.
    replica = replica_id()
    clock = DatabaseClock()  # the relays' leases on the database's clock, synced at start-up
    store = EventStore(runtime.db, outbox_owner=replica)
    relay = OutboxRelay(
        store.events,
        broker_publisher(runtime.broker),
        owner=replica,
        lease_seconds=settings.outbox_lease_seconds,
        clock=clock,
        sweep_interval=settings.outbox_sweep_seconds,
        max_attempts=settings.outbox_max_attempts,
    )
    rpc = RpcClient(settings.rabbit_url, app_id=settings.service_name)
    deps = OrderDeps(
        store=store,
        views=OrderViews(runtime.db),
        keys=IdempotencyKeys(runtime.db),
        # --8<-- [start:ask-inventory]
        quote=RequestClient[QuoteRequest, Quote](
            rpc,
            topology.INVENTORY_QUOTES,
            Quote,
            timeout=settings.quote_timeout_seconds,
            unavailable=QuoteUnavailableError,
        ),
        # --8<-- [end:ask-inventory]
        wake_relay=relay.wake,
        pushed_back=relay.pushed_back,
        payment_key=settings.payment_token_recipient(),
        saga_deadline_seconds=settings.saga_deadline_seconds,
    )
    runtime.serve(HANDLERS, deps)
    handlers.count_finished_from_zero()
    # The outbox's backlog for Prometheus (warren_outbox_pending, ...), sampled every 5 s.
    backlog = Sampled(functools.partial(outbox_stats, store.events))
    outbox_gauges(settings.service_name, backlog)
    deadlines = functools.partial(handlers.watch_deadlines, deps, every=settings.saga_sweep_seconds)
    lifecycle = Lifecycle(
        on_startup=[deps.create_indexes, functools.partial(clock.sync, runtime.client)],
        background=[
            relay.run,
            deadlines,
            backlog.run,
        ],  # the relay sweeps at once: what a last run left
        on_shutdown=[rpc.close],
    )
    return api.create_api(runtime, deps, lifespan(runtime, lifecycle), settings)
