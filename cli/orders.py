"""``warren orders``: the order service's event store and its read model.

An operations tool: it reads and writes the order service's database directly.
"""

from __future__ import annotations

import asyncio
import time

import typer
from rich.console import Console

from services.order.handlers import rebuild_projections
from services.order.repository import EventStore, OrderViews
from services.order.settings import OrderSettings
from shared import mongo

app = typer.Typer(help="The order service's event store and read model.", no_args_is_help=True)
console = Console()


async def _rebuild() -> int:
    """Replay every event into a fresh read model; how many orders it holds."""
    settings = OrderSettings()
    client = mongo.make_client(settings)
    try:
        db = mongo.service_database(client, settings)
        return await rebuild_projections(EventStore(db), OrderViews(db))
    finally:
        await client.close()


@app.command("rebuild")
def rebuild_read_model() -> None:
    """Drop the orders read model and rebuild it by replaying every event (CQRS projection)."""
    started = time.perf_counter()
    with console.status("replaying order events..."):
        count = asyncio.run(_rebuild())
    console.print(f"[green]rebuilt[/] {count} orders in {time.perf_counter() - started:.2f}s")
