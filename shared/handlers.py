"""Handler tables: which function handles which event, on which queue -- one table per service.

Each service's ``handlers.py`` ends with its table::

    HANDLERS: HandlerTable[InventoryDeps] = {
        topology.INVENTORY_ORDER_PLACED: {OrderPlaced: reserve_stock},
        topology.INVENTORY_PAYMENT_OUTCOMES: {PaymentSucceeded: settle, PaymentFailed: settle},
        ...
    }

A handler is ``async def handler(envelope, event, deps) -> list[Envelope]``: the event arrives
typed (the class the table names), ``deps`` are the service's dependencies (repositories,
clients), and the return value is the events to publish. The table is the one place where a
queue meets its handlers: :func:`bind` gives the broker consumer (``shared.messaging``) and
the in-memory bus (``shared.testing.bus``) the same routes, and :func:`check_table` refuses a
table that misses an event its queue receives or names one the queue never gets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from shared.contracts import Envelope, EventData
from shared.messaging import EventHandler, Routes
from shared.topology import ConsumerQueue

D = TypeVar("D")

Handler = Callable[[Envelope, Any, D], Awaitable[Sequence[Envelope]]]
"""``(envelope, typed event, the service's deps) -> events to publish``."""

HandlerTable = Mapping[ConsumerQueue, Mapping[type[EventData], Handler[D]]]
"""Queue -> event class -> handler: everything a service consumes."""


class HandlerTableError(ValueError):
    """A queue's event classes and its handlers do not match."""


def check_table(table: HandlerTable[Any]) -> None:
    """Every event class a queue receives has a handler, and nothing else is in the table."""
    for queue, handlers in table.items():
        missing = [cls.__name__ for cls in queue.events if cls not in handlers]
        extra = [cls.__name__ for cls in handlers if cls not in queue.events]
        if missing or extra:
            raise HandlerTableError(
                f"{queue.name}: no handler for {missing or 'nothing'}; "
                f"handlers for events it never receives: {extra or 'none'}"
            )


def _with_deps(handler: Handler[D], deps: D) -> EventHandler:
    async def call(envelope: Envelope, event: Any) -> Sequence[Envelope]:
        return await handler(envelope, event, deps)

    call.__name__ = getattr(handler, "__name__", "handler")
    return call


def bind(table: HandlerTable[D], deps: D) -> dict[ConsumerQueue, Routes]:
    """The table with ``deps`` given to every handler: queue -> event class -> ``(envelope, event)``."""
    check_table(table)
    return {
        queue: {cls: _with_deps(handler, deps) for cls, handler in handlers.items()}
        for queue, handlers in table.items()
    }
