"""``warren outbox``: the order service's outbox -- what is pending, what is parked, and retry.

An event the broker keeps refusing (unroutable because a subscriber's queue is gone, or nacked)
is **parked** after a number of attempts, so it stops holding up the sweep. Fix the cause
(``warren topology declare`` brings a deleted queue back), then ``warren outbox retry --all``.

An operations tool: it reads the order service's database directly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from shared import mongo
from shared.outbox import outbox_stats, parked_events, retry_parked
from shared.settings import WarrenSettings

app = typer.Typer(
    help="The order service's outbox: list, retry parked events.", no_args_is_help=True
)
console = Console()


async def _with_events(work: Any) -> Any:
    settings = WarrenSettings()
    client = mongo.make_client(settings)
    try:
        return await work(client[settings.mongo_db_of("order")]["order_events"])
    finally:
        await client.close()


@app.command("list")
def list_command(
    limit: int = typer.Option(50, min=1, help="How many parked events to show."),
) -> None:
    """Counts of pending and parked events, and the parked ones with their last error."""

    async def read(events: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return await outbox_stats(events), await parked_events(events, limit)

    stats, parked = asyncio.run(_with_events(read))
    console.print(
        f"pending {stats['pending']} (oldest {stats['oldest_pending_seconds']} s), "
        f"parked [{'red' if stats['parked'] else 'green'}]{stats['parked']}[/]"
    )
    if parked:
        table = Table("event", "type", "attempts", "parked at", "last error", title="Parked events")
        for doc in parked:
            table.add_row(
                doc["_id"],
                doc["type"],
                str(doc.get("outbox_attempts", 0)),
                str(doc.get("parked_at", "")),
                str(doc.get("outbox_error", ""))[:80],
            )
        console.print(table)


@app.command("retry")
def retry_command(
    key: list[str] = typer.Option(None, "--id", help="A parked event's key (repeatable)."),
    retry_all: bool = typer.Option(False, "--all", help="Retry every parked event."),
) -> None:
    """Put parked events back on the relay's path (fresh attempts); it publishes them within a sweep."""
    if bool(key) == retry_all:
        raise typer.BadParameter("give either --id KEY (one or more) or --all")

    async def retry(events: Any) -> int:
        return await retry_parked(events, None if retry_all else key)

    count = asyncio.run(_with_events(retry))
    console.print(f"{count} parked event(s) back on the relay's path")
    if key and count < len(key):
        raise typer.Exit(1)
