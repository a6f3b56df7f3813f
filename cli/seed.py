"""``warren seed``: the demo catalog, loaded into inventory's database.

Compose's ``seed`` job runs it before the services start, and so does the ``inventory`` line of
the ``Procfile``; ``make seed`` adds ``--reset``.
"""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from services.inventory.catalog import CATALOG
from services.inventory.repository import StockRepository
from services.inventory.settings import InventorySettings
from shared import mongo
from shared.startup import wait_for_dependencies

console = Console()


async def _seed_catalog(reset: bool) -> int:
    """Wait for MongoDB, then write the catalog; how many SKUs were seeded."""
    settings = InventorySettings()
    client = mongo.make_client(settings)
    try:
        await wait_for_dependencies(None, client)
        repo = StockRepository(mongo.service_database(client, settings))
        return await repo.seed(CATALOG, reset=reset)
    finally:
        await client.close()


def seed(
    reset: bool = typer.Option(False, help="Also put every SKU's stock back to its initial level."),
) -> None:
    """Load the demo catalog (a dozen SKUs with price and stock) into inventory's database."""
    count = asyncio.run(_seed_catalog(reset))
    console.print(f"[green]seeded[/] {count} SKUs" + (" (stock reset)" if reset else ""))
