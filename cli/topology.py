"""``warren topology``: RabbitMQ's exchanges, queues and bindings, as ``shared.topology`` has them.

``export`` writes them as RabbitMQ definitions (compose's broker loads those at boot),
``declare`` creates them on a running broker, ``reset`` deletes Warren's queues.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import typer
from dotenv import dotenv_values
from rich.console import Console

from shared.messaging import make_broker
from shared.settings import WarrenSettings
from shared.topology import declare_topology, definitions, delete_queues

app = typer.Typer(help="The RabbitMQ topology.", no_args_is_help=True)
console = Console()


@app.command("export")
def export_topology(
    output: Path = typer.Option(
        Path("-"), help="Where to write the definitions; '-' (the default) is standard output."
    ),
) -> None:
    """Write the topology, and the broker user from RABBITMQ_USER / RABBITMQ_PASSWORD (the
    environment, else .env), as RabbitMQ definitions.

    Compose's `broker-definitions` job runs this at every `docker compose up`, and the broker
    loads the file at boot (infra/rabbitmq/rabbitmq.conf).
    """
    values = {**dotenv_values(".env"), **os.environ}
    user, password = values.get("RABBITMQ_USER"), values.get("RABBITMQ_PASSWORD")
    if not user or not password:
        console.print("[red]RABBITMQ_USER and RABBITMQ_PASSWORD must be set (in .env)[/]")
        raise typer.Exit(2)
    # The delay queues the services will use: their RETRY_DELAYS_SECONDS setting.
    delays = WarrenSettings().retry_delays_seconds
    text = (
        json.dumps(definitions(retry_delays=delays, user=user, password=password), indent=2) + "\n"
    )
    if str(output) == "-":
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    console.print(f"wrote {output} (user {user})")


async def _declare() -> None:
    """Connect to the broker, declare the whole topology, disconnect."""
    settings = WarrenSettings()
    broker = make_broker(settings)
    await broker.connect()
    try:
        await declare_topology(broker, settings.retry_delays_seconds)
    finally:
        await broker.stop()


@app.command("declare")
def declare() -> None:
    """Declare every exchange, queue and binding on the broker (services also do it at start)."""
    asyncio.run(_declare())
    console.print("[green]topology declared[/]")


@app.command("reset")
def reset(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete every Warren queue, with its messages (services re-declare them at start).

    Needed after a topology change that alters a queue's arguments, which RabbitMQ refuses
    to redeclare in place.
    """
    if not yes:
        typer.confirm("Delete every Warren queue and the messages in it?", abort=True)
    settings = WarrenSettings()
    deleted = asyncio.run(delete_queues(settings.rabbit_url, settings.retry_delays_seconds))
    console.print(f"deleted {deleted} queues")
