"""``warren keys``: the key pair the payment token is sealed with (:mod:`shared.sealing`).

``warren keys generate`` prints the ``.env`` lines of a new pair: the public key and its id
for the order service, the private key for payment alone. ``--keep`` carries the private keys
configured now into the new ``PAYMENT_TOKEN_KEYS``, for a rotation (docs/14-security.md).
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime

import typer
from dotenv import dotenv_values

from shared.sealing import (
    SealingError,
    generate_key,
    private_keys_from_text,
    private_text,
    public_text,
)

app = typer.Typer(help="The payment token's sealing keys.", no_args_is_help=True)


def configured_private_keys() -> dict[str, str]:
    """``PAYMENT_TOKEN_KEYS`` as configured now (the environment, else ``.env``)."""
    raw = os.environ.get("PAYMENT_TOKEN_KEYS") or dotenv_values(".env").get("PAYMENT_TOKEN_KEYS")
    if not raw:
        return {}
    try:
        keys = json.loads(raw)
        private_keys_from_text(keys)  # each one must be a key: never carry a broken one along
    except (ValueError, TypeError, AttributeError, SealingError) as exc:
        # json's message quotes the text around the fault: a private key. Say what, not where.
        reason = exc if isinstance(exc, SealingError) else "not a JSON object of key id -> key"
        raise typer.BadParameter(f"PAYMENT_TOKEN_KEYS: {reason}") from None
    return dict(keys)


def new_key_id() -> str:
    return f"pt-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(2)}"


def env_lines(kid: str, private_keys: dict[str, str], public_key: str) -> list[str]:
    """The ``.env`` lines of a key pair (``private_keys`` holds the new key and any kept)."""
    return [
        f"# Payment token keys, made {datetime.now(UTC):%Y-%m-%d}. PAYMENT_TOKEN_KEYS is secret:",
        "# give it to the payment service only. The other two are public (the order service).",
        f"PAYMENT_TOKEN_KEY_ID={kid}",
        f"PAYMENT_TOKEN_PUBLIC_KEY={public_key}",
        f"PAYMENT_TOKEN_KEYS='{json.dumps(private_keys)}'",
    ]


@app.command("generate")
def generate(
    kid: str = typer.Option("", help="The new key's id (default: pt-<date>-<random>)."),
    keep: bool = typer.Option(
        False,
        "--keep",
        help="Keep the private keys PAYMENT_TOKEN_KEYS holds now beside the new one (rotation).",
    ),
) -> None:
    """Make a new X25519 key pair for sealing payment tokens; print its .env lines."""
    kid = kid or new_key_id()
    kept = configured_private_keys() if keep else {}
    if kid in kept:
        raise typer.BadParameter(
            f"PAYMENT_TOKEN_KEYS already has a key {kid!r}", param_hint="--kid"
        )
    key = generate_key()
    for line in env_lines(kid, {kid: private_text(key), **kept}, public_text(key)):
        typer.echo(line)
