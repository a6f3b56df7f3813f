"""Build the inventory service: settings -> deps -> handler table (and the quote) -> app."""

from __future__ import annotations

import functools

from starlette.applications import Starlette

from services.inventory import handlers
from services.inventory.handlers import HANDLERS, InventoryDeps
from services.inventory.repository import StockRepository
from services.inventory.settings import InventorySettings
from shared import topology
from shared.clock import DatabaseClock
from shared.contracts import QuoteRequest
from shared.rpc import serve_requests
from shared.service import Lifecycle, bootstrap, service_app


def create_app(settings: InventorySettings | None = None) -> Starlette:
    settings = settings or InventorySettings()
    runtime = bootstrap(settings)
    clock = DatabaseClock()  # leases on the database's clock, synced at start-up
    deps = InventoryDeps(
        stock=StockRepository(
            runtime.db, lease_seconds=settings.decision_lease_seconds, clock=clock
        )
    )
    runtime.serve(HANDLERS, deps)
    # Request-reply: the order service asks for a quote before it accepts an order.
    serve_requests(
        runtime.broker,
        topology.INVENTORY_QUOTES,
        QuoteRequest,
        functools.partial(handlers.quote, deps=deps),
    )
    return service_app(
        runtime, Lifecycle(on_startup=[functools.partial(clock.sync, runtime.client)])
    )
