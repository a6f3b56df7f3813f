"""``warren``: the command line for running, demonstrating and operating Warren.

Every command reads the same settings as the services (environment variables and ``.env``).
This module is the root of the command line: the ``--compose`` option, tracing, and where each
command lives (one module per command or group of commands, in ``cli/``).
"""

from __future__ import annotations

import atexit
import os

import typer
from dotenv import dotenv_values
from rich.console import Console

from cli import (
    audit,
    certs,
    demo,
    dlq,
    keys,
    ledger,
    mail_sink,
    orders,
    outbox,
    secrets,
    seed,
    supervise,
    tokens,
    top,
    topology,
    traces,
)
from shared.observability import exports_traces, setup_observability, shutdown_tracing

app = typer.Typer(
    help="Warren: event-driven microservices on RabbitMQ. Seed, demo and operate the system.",
    add_completion=False,
    no_args_is_help=True,
)
# `warren --help` lists the commands in this order, then the groups in theirs.
app.command("ledger")(ledger.ledger)
app.command("supervise", context_settings=supervise.CONTEXT_SETTINGS)(supervise.supervise)
app.command("seed")(seed.seed)
app.command("demo")(demo.demo)
app.command("audit")(audit.audit)
app.command("top")(top.top)
app.command("token")(tokens.token)
app.command("mail-sink")(mail_sink.mail_sink)
app.add_typer(orders.app, name="orders")
app.add_typer(topology.app, name="topology")
app.add_typer(dlq.app, name="dlq")
app.add_typer(outbox.app, name="outbox")
app.add_typer(traces.app, name="traces")
app.add_typer(keys.app, name="keys")
app.add_typer(secrets.app, name="secrets")
app.add_typer(certs.app, name="certs")

console = Console()


# The addresses compose publishes on this machine, from .env (docker-compose.yml's `ports:`).
# MongoDB as the operator (infra/mongo/init-users.js): its password goes in MONGO_PASSWORD, which
# the settings put into MONGO_URL, URL-quoted, as a container's secret file mongo_password.
# directConnection: compose's MongoDB is a replica set whose members are named mongo, mongo-2 ...,
# names this machine cannot resolve; so the tools talk to the published member alone (the
# primary, unless a failover moved it: then `docker compose run --rm warren ...`).
COMPOSE_ADDRESSES = {
    "RABBIT_URL": "amqp://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@127.0.0.1:{HOST_PORT_RABBITMQ}/",
    "MONGO_URL": "mongodb://operator@127.0.0.1:{HOST_PORT_MONGO}/?authSource=admin"
    "&directConnection=true",
    "MONGO_PASSWORD": "{MONGO_PASSWORD_OPERATOR}",
    "MAIL_API_URL": "http://127.0.0.1:{HOST_PORT_MAILPIT}",
    "WARREN_API": "http://127.0.0.1:{HOST_PORT_API}",
}
# With the TLS profile (docker-compose.tls.yml), WARREN_TLS_CA names the CA's certificate
# (secrets/tls/ca.pem): the broker over AMQPS, MongoDB over TLS, each verified against it. The
# certificates name localhost, which is what the tools dial.
COMPOSE_TLS_ADDRESSES = {
    "RABBIT_URL": "amqps://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@localhost:{HOST_PORT_RABBITMQ_TLS}"
    "/?cafile={WARREN_TLS_CA}",
    "MONGO_URL": "mongodb://operator@localhost:{HOST_PORT_MONGO}/?authSource=admin"
    "&directConnection=true&tls=true&tlsCAFile={WARREN_TLS_CA}",
}


def use_compose() -> None:
    """Point this command at the compose stack from the host: the broker user, the database's
    operator and the host ports come from .env, as docker-compose.yml uses them."""
    values = {**dotenv_values(".env"), **os.environ}
    addresses = COMPOSE_ADDRESSES
    if values.get("WARREN_TLS_CA"):
        addresses = {**COMPOSE_ADDRESSES, **COMPOSE_TLS_ADDRESSES}
    try:
        os.environ.update({k: v.format(**values) for k, v in addresses.items()})
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
        help="Talk to the compose stack from this machine, as the operator (users and ports "
        "from .env). In the stack, `docker compose run --rm warren ...` runs as the operator "
        "too; `docker compose exec order warren ...` runs as that service: its own database only.",
    ),
) -> None:
    """Trace the CLI's own work (e.g. DLQ replays) when OTEL_* variables say where to send it."""
    if compose:
        use_compose()
    if exports_traces():
        setup_observability("warren-cli", level=os.environ.get("LOG_LEVEL", "WARNING"))
        # The DLQ tool talks to RabbitMQ through aio-pika directly (the services use FastStream,
        # whose own middleware traces them). Imported only here: every other run of `warren`
        # would pay the instrumentation's start-up time for nothing.
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor

        AioPikaInstrumentor().instrument()
        atexit.register(shutdown_tracing)
        # --8<-- [end:cli-tracing]


if __name__ == "__main__":
    app()
