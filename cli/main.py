"""``warren``: the command line for running, demonstrating and operating Warren.

Every command reads the same settings as the services (environment variables and ``.env``).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import time
import uuid
from pathlib import Path

import httpx
import typer
from rich.console import Console

from cli import dlq, ledger, outbox, supervise, traces
from shared.observability import exports_traces, setup_observability, shutdown_tracing

app = typer.Typer(
    help="Warren: event-driven microservices on RabbitMQ. Seed, demo and operate the system.",
    add_completion=False,
    no_args_is_help=True,
)
orders_app = typer.Typer(
    help="The order service's event store and read model.", no_args_is_help=True
)
topology_app = typer.Typer(help="The RabbitMQ topology.", no_args_is_help=True)
app.add_typer(orders_app, name="orders")
app.add_typer(topology_app, name="topology")
app.add_typer(dlq.app, name="dlq")
app.add_typer(outbox.app, name="outbox")
app.add_typer(traces.app, name="traces")
app.command("ledger")(ledger.ledger)
app.command("supervise", context_settings=supervise.CONTEXT_SETTINGS)(supervise.supervise)

console = Console()


# The addresses compose publishes on this machine, from .env (docker-compose.yml's `ports:`).
COMPOSE_ADDRESSES = {
    "RABBIT_URL": "amqp://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@127.0.0.1:{HOST_PORT_RABBITMQ}/",
    "MONGO_URL": "mongodb://127.0.0.1:{HOST_PORT_MONGO}",
    "MAIL_API_URL": "http://127.0.0.1:{HOST_PORT_MAILPIT}",
    "WARREN_API": "http://127.0.0.1:{HOST_PORT_API}",
}


def use_compose() -> None:
    """Point this command at the compose stack from the host: the broker user and the host
    ports come from .env, as docker-compose.yml uses them."""
    from dotenv import dotenv_values

    values = {**dotenv_values(".env"), **os.environ}
    try:
        os.environ.update({k: v.format(**values) for k, v in COMPOSE_ADDRESSES.items()})
    except KeyError as missing:
        console.print(f"[red]--compose needs {missing} in .env[/] (see .env.example)")
        raise typer.Exit(2) from None
    os.environ["WARREN_COMPOSE"] = "1"


# --8<-- [start:cli-tracing]
@app.callback()
def _observe(
    compose: bool = typer.Option(
        False,
        "--compose",
        envvar="WARREN_COMPOSE",
        help="Talk to the compose stack from this machine (user and ports from .env). "
        "Inside a container, use `docker compose exec order warren ...` instead.",
    ),
) -> None:
    """Trace the CLI's own work (e.g. DLQ replays) when OTEL_* variables say where to send it."""
    if compose:
        use_compose()
    if exports_traces():
        setup_observability("warren-cli", level=os.environ.get("LOG_LEVEL", "WARNING"))
        # The DLQ tool talks to RabbitMQ through aio-pika directly (the services use FastStream,
        # whose own middleware traces them).
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor

        AioPikaInstrumentor().instrument()
        atexit.register(shutdown_tracing)
        # --8<-- [end:cli-tracing]


@app.command()
def seed(
    reset: bool = typer.Option(False, help="Also put every SKU's stock back to its initial level."),
) -> None:
    """Load the demo catalog (a dozen SKUs with price and stock) into inventory's database."""
    from services.inventory.catalog import CATALOG
    from services.inventory.repository import StockRepository
    from services.inventory.settings import InventorySettings
    from shared import mongo
    from shared.startup import wait_for_dependencies

    async def run() -> int:
        settings = InventorySettings()
        client = mongo.make_client(settings)
        try:
            await wait_for_dependencies(None, client)
            repo = StockRepository(mongo.service_database(client, settings))
            return await repo.seed(CATALOG, reset=reset)
        finally:
            await client.close()

    count = asyncio.run(run())
    console.print(f"[green]seeded[/] {count} SKUs" + (" (stock reset)" if reset else ""))


def _render_status(status: str) -> str:
    colour = {"CONFIRMED": "green", "CANCELLED": "red"}.get(status, "yellow")
    return f"[{colour}]{status}[/]"


@app.command()
def demo(
    api: str = typer.Option(
        "http://127.0.0.1:8000", envvar="WARREN_API", help="Order API base URL."
    ),
    sku: str = typer.Option("RABBIT-PLUSH", help="SKU to order."),
    quantity: int = typer.Option(1, min=1, help="How many."),
    token: str = typer.Option(
        "tok_visa", help="Payment token: tok_visa succeeds, tok_chargeDeclined declines."
    ),
    customer: str = typer.Option("bugs-bunny", help="Customer id (mail goes to <id>@...)."),
    timeout: float = typer.Option(30.0, help="Seconds to wait for a final state."),
) -> None:
    """Place one order and follow it to CONFIRMED or CANCELLED, printing each step."""
    from services.order.domain import FINAL_STATUSES

    body = {
        "customer_id": customer,
        "lines": [{"sku": sku, "quantity": quantity}],
        "payment_token": token,
    }
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return (time.perf_counter() - started) * 1000

    with httpx.Client(base_url=api, timeout=10.0) as client:
        try:
            response = client.post(
                "/orders", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
            )
        except httpx.HTTPError as exc:
            console.print(f"[red]cannot reach the order API at {api}[/]: {exc}")
            raise typer.Exit(2) from exc
        if response.status_code != 202:
            console.print(f"[red]{response.status_code}[/] {response.text}")
            raise typer.Exit(1)
        order_id = response.json()["order_id"]
        console.print(f"POST /orders -> 202, order [bold]{order_id}[/]")
        seen = 0
        deadline = started + timeout
        # Why the last poll showed nothing: said when it changes, and every 10 s while it lasts.
        waiting, said_at = "", 0.0
        while (left := deadline - time.perf_counter()) > 0:
            # The order goes on without the API: a poll that times out (the database is away,
            # the service restarts) is one more reason to wait, never a reason to stop.
            try:
                view = client.get(f"/orders/{order_id}", timeout=min(10.0, left))
            except httpx.TransportError as exc:
                problem = f"GET /orders/{order_id[:8]}... failed ({type(exc).__name__})"
            else:
                if view.status_code == 200:
                    problem = ""
                else:
                    problem = f"GET /orders/{order_id[:8]}... answered {view.status_code}"
            if problem:
                if problem != waiting or time.perf_counter() - said_at >= 10:
                    console.print(f"  +{elapsed_ms():7.0f} ms  still waiting: {problem}")
                    waiting, said_at = problem, time.perf_counter()
                time.sleep(min(0.5, max(0.0, deadline - time.perf_counter())))
                continue
            waiting = ""
            order = view.json()
            for entry in order["history"][seen:]:
                console.print(f"  +{elapsed_ms():7.0f} ms  v{entry['version']}  {entry['type']}")
            seen = len(order["history"])
            if order["status"] in FINAL_STATUSES:
                reason = f" ({order['cancel_reason']})" if order.get("cancel_reason") else ""
                console.print(
                    f"order {order_id[:8]} is {_render_status(order['status'])}{reason}"
                    f" after {elapsed_ms():.0f} ms"
                )
                return
            time.sleep(0.05)
    console.print(f"[red]order {order_id} not final after {timeout:g}s[/]")
    raise typer.Exit(1)


@orders_app.command("rebuild")
def rebuild_read_model() -> None:
    """Drop the orders read model and rebuild it by replaying every event (CQRS projection)."""
    from services.order.handlers import rebuild_projections
    from services.order.repository import EventStore, OrderViews
    from services.order.settings import OrderSettings
    from shared import mongo

    async def run() -> int:
        settings = OrderSettings()
        client = mongo.make_client(settings)
        try:
            db = mongo.service_database(client, settings)
            return await rebuild_projections(EventStore(db), OrderViews(db))
        finally:
            await client.close()

    started = time.perf_counter()
    with console.status("replaying order events..."):
        count = asyncio.run(run())
    console.print(f"[green]rebuilt[/] {count} orders in {time.perf_counter() - started:.2f}s")


@topology_app.command("export")
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
    from dotenv import dotenv_values

    from shared.topology import definitions

    values = {**dotenv_values(".env"), **os.environ}
    user, password = values.get("RABBITMQ_USER"), values.get("RABBITMQ_PASSWORD")
    if not user or not password:
        console.print("[red]RABBITMQ_USER and RABBITMQ_PASSWORD must be set (in .env)[/]")
        raise typer.Exit(2)
    text = json.dumps(definitions(user=user, password=password), indent=2) + "\n"
    if str(output) == "-":
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    console.print(f"wrote {output} (user {user})")


@topology_app.command("declare")
def declare() -> None:
    """Declare every exchange, queue and binding on the broker (services also do it at start)."""
    from shared import topology
    from shared.messaging import make_broker
    from shared.settings import WarrenSettings

    async def run() -> None:
        settings = WarrenSettings()
        broker = make_broker(settings)
        await broker.connect()
        try:
            await topology.declare_topology(broker, settings.retry_delays_seconds)
        finally:
            await broker.stop()

    asyncio.run(run())
    console.print("[green]topology declared[/]")


@topology_app.command("reset")
def reset(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete every Warren queue, with its messages (services re-declare them at start).

    Needed after a topology change that alters a queue's arguments, which RabbitMQ refuses
    to redeclare in place.
    """
    from shared import topology
    from shared.settings import WarrenSettings

    if not yes:
        typer.confirm("Delete every Warren queue and the messages in it?", abort=True)
    settings = WarrenSettings()
    deleted = asyncio.run(
        topology.delete_queues(settings.rabbit_url, settings.retry_delays_seconds)
    )
    console.print(f"deleted {deleted} queues")


@app.command("mail-sink")
def mail_sink(
    maildir: Path = typer.Option(Path(".run/mail"), help="Maildir that receives every message."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(1025, help="SMTP port."),
    api_port: int = typer.Option(8025, help="Port of the Mailpit-like API (0: none)."),
) -> None:
    """Run a local SMTP server that keeps every email in a Maildir, with Mailpit's API (the
    local stand-in for Mailpit)."""
    from cli.mail_sink import serve

    console.print(
        f"SMTP sink on {host}:{port}, mail kept in {maildir}/new"
        + (f", API on http://{host}:{api_port}" if api_port else "")
    )
    serve(maildir, host, port, api_port)


if __name__ == "__main__":
    app()
