"""Start a service's ASGI app under uvicorn, with ``--help``, ``--host`` and ``--port``."""

from __future__ import annotations

import os

import typer
import uvicorn


def run_service(factory: str, *, default_port: int, description: str) -> None:
    """Serve ``factory`` (``"module:function"`` that builds the app) until Ctrl-C."""
    cli = typer.Typer(add_completion=False)

    @cli.command(help=description)
    def main(
        host: str = typer.Option(os.environ.get("HOST", "127.0.0.1"), help="Interface to bind."),
        port: int = typer.Option(
            int(os.environ.get("PORT", default_port)), help="HTTP port (health checks, API)."
        ),
    ) -> None:
        # log_config=None: our structlog set-up (done by the factory) formats uvicorn's logs too.
        uvicorn.run(factory, factory=True, host=host, port=port, log_config=None, access_log=False)

    cli()
