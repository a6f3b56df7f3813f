"""``warren mail-sink``: the local stand-in for Mailpit -- SMTP in, a Maildir, and Mailpit's API.

Emails arrive over SMTP and are kept in a Maildir (``.run/mail/new``), one file each. A small
HTTP server answers the two calls of Mailpit's API that Warren makes, so that the local run and
compose behave alike:

* ``GET /api/v1/search?query=message-id:"<id>"`` -- asked by the email worker before it re-sends
  an email whose worker died mid-send;
* ``GET /api/v1/messages`` -- every message, with its Message-ID (``warren ledger`` counts them).
"""

from __future__ import annotations

import json
import logging
import mailbox
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import structlog
import typer
from rich.console import Console

_MESSAGE_ID_QUERY = re.compile(r'message-id:"?<?([^">]+)>?"?')

console = Console()


def message_ids(maildir: Path) -> Iterator[str]:
    """The Message-ID of every email in the Maildir, without angle brackets."""
    for message in mailbox.Maildir(maildir, create=False):
        yield str(message.get("Message-ID", "")).strip().strip("<>")


def _summary(message_id: str) -> dict[str, Any]:
    return {"MessageID": message_id}  # the field Mailpit's summaries carry it in


def make_api(maildir: Path, host: str, port: int) -> ThreadingHTTPServer:
    class Api(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            ids = list(message_ids(maildir))
            if url.path == "/api/v1/messages":
                found = ids
            elif url.path == "/api/v1/search":
                query = parse_qs(url.query).get("query", [""])[0]
                wanted = _MESSAGE_ID_QUERY.search(query)
                if wanted is None:
                    self.send_error(400, "only message-id:<id> searches are supported")
                    return
                found = [i for i in ids if i == wanted.group(1)]
            else:
                self.send_error(404)
                return
            body = json.dumps(
                {
                    "total": len(ids),
                    "messages_count": len(found),
                    "messages": [_summary(i) for i in found],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # quiet: one line per call is noise
            pass

    return ThreadingHTTPServer((host, port), Api)


def serve(maildir: Path, host: str, port: int, api_port: int) -> None:
    """Run the SMTP sink (and the API, unless ``api_port`` is 0) until interrupted."""
    # aiosmtpd is a development requirement (compose runs Mailpit instead): imported here, so
    # that `warren`, which loads this module for its mail-sink command, still starts in the
    # image, where it is not installed.
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Mailbox

    # aiosmtpd logs every SMTP command of every conversation at INFO: five lines or more per
    # email in `make run`'s one log stream. Its warnings and errors still show; each email
    # gets one line of ours instead.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    log = structlog.get_logger(__name__)

    class LoggingMailbox(Mailbox):
        def handle_message(self, message: Any) -> None:
            super().handle_message(message)
            log.info(
                "email received",
                message_id=str(message.get("Message-ID", "")).strip("<>"),
                to=message.get("X-RcptTo"),
                subject=message.get("Subject"),
            )

    # Maildir(create=True) leaves an existing empty folder without tmp/new/cur: make them.
    for part in ("tmp", "new", "cur"):
        (maildir / part).mkdir(parents=True, exist_ok=True)
    controller = Controller(LoggingMailbox(maildir), hostname=host, port=port)
    controller.start()
    api = make_api(maildir, host, api_port) if api_port else None
    if api is not None:
        threading.Thread(target=api.serve_forever, name="mail-api", daemon=True).start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if api is not None:
            api.shutdown()
        controller.stop()


def mail_sink(
    maildir: Path = typer.Option(Path(".run/mail"), help="Maildir that receives every message."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(1025, help="SMTP port."),
    api_port: int = typer.Option(8025, help="Port of the Mailpit-like API (0: none)."),
) -> None:
    """Run a local SMTP server that keeps every email in a Maildir, with Mailpit's API (the
    local stand-in for Mailpit)."""
    console.print(
        f"SMTP sink on {host}:{port}, mail kept in {maildir}/new"
        + (f", API on http://{host}:{api_port}" if api_port else "")
    )
    serve(maildir, host, port, api_port)
