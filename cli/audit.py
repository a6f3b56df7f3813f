"""``warren audit``: an order's audit trail -- every arrival of each of its events at the audit
service, who published it and the verdict, a refused forgery too -- or the broker's own
security events.

An operations tool: it reads the audit service's database directly (``<prefix>_audit``).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from services.audit.repository import AuditTrail
from shared import mongo
from shared.settings import WarrenSettings

console = Console()


async def _read(order_id: str | None, limit: int) -> list[dict[str, Any]]:
    settings = WarrenSettings()
    client = mongo.make_client(settings)
    try:
        trail = AuditTrail(client[settings.mongo_db_of("audit")])
        if order_id is None:
            return await trail.latest_broker_events(limit)
        return await trail.order_trail(order_id)
    finally:
        await client.close()


def _time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if moment else ""


def _verdict(verdict: str) -> str:
    colour = "green" if verdict == "verified" else "yellow" if verdict == "unverified" else "red"
    return f"[{colour}]{verdict}[/]"


def trail_table(order_id: str, entries: list[dict[str, Any]]) -> Table:
    table = Table(
        "time (UTC)", "type", "publisher", "verdict", "routing key", title=f"Order {order_id}"
    )
    for entry in entries:
        table.add_row(
            _time(entry["occurred_at"]),
            f"{entry['type']} v{entry['version']}",
            entry["publisher"] or "?",
            _verdict(entry["verdict"]),
            entry["routing_key"],
        )
    return table


def broker_table(entries: list[dict[str, Any]]) -> Table:
    table = Table(
        "time (UTC)", "event", "user", "peer", "by", "detail", title="Broker security events"
    )
    for entry in entries:
        event = entry["event"]
        table.add_row(
            _time(entry["at"]),
            f"[red]{event}[/]" if event.endswith("failure") else event,
            entry["user"] or "",
            entry["peer"] or "",
            entry["by"] or "",
            entry["detail"],
        )
    return table


def audit(
    order_id: str | None = typer.Argument(
        None, help="The order whose trail to show (its id: POST /orders answered it)."
    ),
    broker: bool = typer.Option(
        False,
        "--broker",
        help="Show the broker's own security events instead: logins (failed ones in red), "
        "users and permissions created, changed or deleted.",
    ),
    limit: int = typer.Option(50, min=1, help="With --broker: how many, the latest."),
) -> None:
    """Show an order's audit trail: each of its events as the audit service recorded it --
    when it occurred, its type, who published it (the broker user RabbitMQ checked) and the
    verdict (verified, or forged: why). Exits 1 when nothing is recorded."""
    if broker == (order_id is not None):
        raise typer.BadParameter("give an order id, or --broker")
    entries = asyncio.run(_read(None if broker else order_id, limit))
    if not entries:
        what = "broker security events" if broker else f"audit records for order {order_id}"
        console.print(f"[yellow]no {what}[/] (is the audit service running?)")
        raise typer.Exit(1)
    console.print(broker_table(entries) if broker else trail_table(str(order_id), entries))
