"""``warren token``: a bearer token for the order API, signed with ``API_TOKEN_SECRET``.

A development stand-in for an identity provider: whoever holds the key can sign in as anyone.
It prints the token alone, for ``TOKEN=$(warren token bugs-bunny)`` and then
``curl -H "Authorization: Bearer $TOKEN" ...`` (docs/14-security.md).
"""

from __future__ import annotations

from datetime import timedelta

import typer

from shared import auth

# A day: long enough for a tutorial session, short enough that a token pasted somewhere expires.
DEFAULT_TTL_SECONDS = int(auth.DEFAULT_TTL.total_seconds())
MAX_TTL_SECONDS = 30 * 24 * 3600


def token(
    customer: str = typer.Argument(
        ..., help="The customer id the token names (letters, digits, '.', '_', '-')."
    ),
    operator: bool = typer.Option(
        False,
        "--operator",
        help="An operator's token: reads any customer's orders, places none.",
    ),
    ttl: int = typer.Option(
        DEFAULT_TTL_SECONDS,
        min=1,
        max=MAX_TTL_SECONDS,
        help="Seconds until the token expires.",
    ),
) -> None:
    """Print a signed bearer token for CUSTOMER (or, with --operator, an operator's)."""
    if not auth.is_customer_id(customer):
        raise typer.BadParameter(
            "letters, digits, '.', '_' and '-', a letter or digit first, at most 64",
            param_hint="CUSTOMER",
        )
    try:
        secret = auth.configured_secret()
    except auth.SecretNotConfiguredError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    role = auth.OPERATOR if operator else auth.CUSTOMER
    typer.echo(auth.issue(customer, role, secret=secret, ttl=timedelta(seconds=ttl)))
