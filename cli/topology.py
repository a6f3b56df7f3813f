"""``warren topology``: RabbitMQ's exchanges, queues and bindings, as ``shared.topology`` has them,
and the broker users that may use them.

``export`` writes them as RabbitMQ definitions (compose's broker loads those at boot),
``provision`` loads them into a running broker (with ``rabbitmqctl``), ``declare`` creates the
topology alone over AMQP, ``reset`` deletes Warren's queues.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

import typer
from dotenv import dotenv_values
from rich.console import Console

from shared.messaging import make_broker
from shared.settings import BrokerPasswords, WarrenSettings, secret_file_values
from shared.topology import declare_topology, definitions, delete_queues

app = typer.Typer(help="The RabbitMQ topology, and who may use it.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def fail(quietly: bool, reason: str, code: int = 1) -> NoReturn:
    """Stop with ``reason``; ``quietly`` (--env): exit 0, the services run as the operator."""
    errors.print(f"[red]{reason}[/]")
    if quietly:
        errors.print("[yellow]the services connect as the operator (one user for all)[/]")
        raise typer.Exit(0)
    raise typer.Exit(code)


def import_definitions(
    ctl: list[str], exported: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """``rabbitmqctl import_definitions``. rabbitmqctl may run as the rabbitmq user, and 3.10's
    cannot read standard input: hand it a file it can read."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(exported, file)
        file.flush()
        os.chmod(file.name, 0o644)
        return subprocess.run(
            [*ctl, "import_definitions", file.name], capture_output=True, text=True, timeout=120
        )


@app.command("export")
def export_topology(
    output: Path = typer.Option(
        Path("-"), help="Where to write the definitions; '-' (the default) is standard output."
    ),
) -> None:
    """Write the topology, and the broker user from RABBITMQ_USER / RABBITMQ_PASSWORD (a secret
    file in WARREN_SECRETS_DIR, else the environment, else .env), as RabbitMQ definitions.

    Compose's `broker-definitions` job runs this at every `docker compose up`, and the broker
    loads the file at boot (infra/rabbitmq/rabbitmq.conf).
    """
    # Under compose the passwords are secret files (WARREN_SECRETS_DIR), the variables blank.
    values = {**dotenv_values(".env"), **os.environ, **secret_file_values()}
    user, password = values.get("RABBITMQ_USER"), values.get("RABBITMQ_PASSWORD")
    if not user or not password:
        console.print("[red]RABBITMQ_USER and RABBITMQ_PASSWORD must be set (in .env)[/]")
        raise typer.Exit(2)
    # The delay queues the services will use: their RETRY_DELAYS_SECONDS setting.
    settings, services = WarrenSettings(), BrokerPasswords().configured()
    exported = definitions(
        retry_delays=settings.retry_delays_seconds,
        user=user,
        password=password,
        service_passwords=services,
        queue_max_length=settings.queue_max_length,
    )
    text = json.dumps(exported, indent=2) + "\n"
    if str(output) == "-":
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    console.print(f"wrote {output} (users {', '.join([user, *services])})")


# --8<-- [start:provision]
@app.command("provision")
def provision(
    env: bool = typer.Option(
        False,
        "--env",
        help="Print `export RABBIT_URL_<SERVICE>=...` lines for a shell to eval (`make run` "
        "does); if the users cannot be provisioned, say why on stderr and print nothing.",
    ),
) -> None:
    """Load the topology, its queue length limits (policies) and one broker user per service
    (BROKER_PASSWORD_ORDER, ...: the environment, else .env) into the broker of RABBIT_URL, with `rabbitmqctl import_definitions`
    (WARREN_RABBITMQCTL names another command, e.g. `scripts/rabbitmq4.sh ctl`). Idempotent.

    Each service then connects as its own user (its RABBIT_URL), with the least privilege of
    shared/topology.py's SERVICES; the operator's user is left as it is.
    """
    settings, services = WarrenSettings(), BrokerPasswords().configured()
    if not services:
        fail(env, "no BROKER_PASSWORD_<SERVICE> is set (see .env.example)", code=2)
    vhost = unquote(urlsplit(settings.rabbit_url).path[1:]) or "/"
    exported = definitions(
        vhost,
        retry_delays=settings.retry_delays_seconds,
        service_passwords=services,
        queue_max_length=settings.queue_max_length,
    )
    ctl = shlex.split(os.environ.get("WARREN_RABBITMQCTL", "rabbitmqctl"))
    try:
        imported = import_definitions(ctl, exported)
    except OSError as exc:
        imported = subprocess.CompletedProcess(ctl, 1, "", str(exc))
    if imported.returncode != 0:
        fail(env, f"{' '.join(ctl)} import_definitions failed: {imported.stderr.strip()}")
    errors.print(
        f"provisioned vhost {vhost}: topology, {len(exported['policies'])} queue length limits "
        f"and users {', '.join(services)}"
    )
    if env:
        for user, password in services.items():
            url = urlsplit(settings.rabbit_url)
            netloc = f"{user}:{password}@{url.hostname}:{url.port or 5672}"
            typer.echo(f"export RABBIT_URL_{user.upper()}={url._replace(netloc=netloc).geturl()}")
    # --8<-- [end:provision]


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
