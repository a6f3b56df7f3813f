"""``warren secrets``: the files compose hands the containers as secrets, written from ``.env``.

Under compose no secret travels in a container's environment: a container that needs one gets it
as a file in /run/secrets (docker-compose.yml, ``secrets:``), and no other container sees it.
Compose reads those files from ``./secrets``: one per secret variable of ``.env``, named after it
in lower case (``BROKER_PASSWORD_ORDER`` -> ``secrets/broker_password_order``). The repository
commits them with ``.env``'s development values, so that ``docker compose up`` works on a fresh
clone; after changing a secret in ``.env``, ``warren secrets write`` (``make secrets``) writes
them again (``tests/unit/test_compose_file.py`` fails while they disagree).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import typer
from dotenv import dotenv_values
from rich.console import Console

# The variables of .env that are secrets: the operator's and each service's broker password,
# MongoDB's root password and each of its users' (every service's, the operator's), the private
# keys that open payment tokens, the key that signs the API's bearer tokens; and what the members
# of a cluster prove themselves with: RabbitMQ's Erlang cookie, MongoDB's replica set key.
SECRET_VARIABLES = re.compile(
    r"RABBITMQ_PASSWORD|BROKER_PASSWORD_[A-Z0-9_]+|MONGO_ROOT_PASSWORD|MONGO_PASSWORD_[A-Z0-9_]+"
    r"|PAYMENT_TOKEN_KEYS|API_TOKEN_SECRET|GRAFANA_ADMIN_PASSWORD"
    r"|BROKER_ERLANG_COOKIE|MONGO_REPLICA_SET_KEY"
)

app = typer.Typer(help="The secret files compose gives the containers.", no_args_is_help=True)
console = Console()


def secret_files(values: Mapping[str, str | None]) -> dict[str, str]:
    """File name -> content: each secret variable of ``values`` that has a value."""
    return {
        name.lower(): value
        for name, value in values.items()
        if SECRET_VARIABLES.fullmatch(name) and value
    }


@app.command("write")
def write(
    output: Path = typer.Option(Path("secrets"), help="The folder compose reads them from."),
) -> None:
    """Write one file per secret variable of .env into OUTPUT (./secrets).

    The shell's value wins over .env's, as in compose's ${VAR}. The files are readable by the
    containers' users: compose bind-mounts each file as it is, ignoring a secret's `mode` and
    `uid`. A running stack reads them at its next start: `docker compose up -d --force-recreate`.
    """
    values = {**dotenv_values(".env"), **os.environ}
    files = secret_files(values)
    if not files:
        console.print("[red]no secret variable in .env (see .env.example)[/]")
        raise typer.Exit(2)
    output.mkdir(parents=True, exist_ok=True)
    for name, value in sorted(files.items()):
        path = output / name
        path.write_text(value + "\n")
        path.chmod(0o644)
    console.print(f"wrote {len(files)} secret files to {output}/: {', '.join(sorted(files))}")
