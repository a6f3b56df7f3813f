"""Start a service's ASGI app under uvicorn, with ``--help``, ``--host`` and ``--port``.

Where it listens comes from the service's settings (``HOST`` and ``PORT`` in the environment
or ``.env``, else the service's default port); ``--host``/``--port`` override them.
"""

from __future__ import annotations

import os

import typer
import uvicorn

from shared.settings import WarrenSettings


def run_service(factory: str, settings: type[WarrenSettings], *, description: str) -> None:
    """Serve ``factory`` (``"module:function"`` that builds the app) until Ctrl-C."""
    cli = typer.Typer(add_completion=False)
    fields = settings.model_fields

    @cli.command(help=description)
    def main(
        host: str | None = typer.Option(
            None, help=f"Interface to bind (default: HOST, else {fields['host'].default})."
        ),
        port: int | None = typer.Option(
            None,
            help=f"HTTP port (health checks, API) (default: PORT, else {fields['port'].default}).",
        ),
    ) -> None:
        configured = settings()
        # log_config=None: our structlog set-up (done by the factory) formats uvicorn's logs too.
        uvicorn.run(
            factory,
            factory=True,
            host=configured.host if host is None else host,
            port=configured.port if port is None else port,
            log_config=None,
            access_log=False,
            # The client address is the socket's peer: uvicorn would otherwise believe any
            # X-Forwarded-For sent from 127.0.0.1 -- every local client could pick the address
            # that the rate limit counts. Behind a proxy, name it: FORWARDED_ALLOW_IPS=<its IP>.
            forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", ""),
        )

    cli()
