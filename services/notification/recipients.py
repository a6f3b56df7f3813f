"""Who an email goes to: one address, made here from the customer id -- never text that a
client could shape into a second recipient (``victim@evil.example,x``) or a header of its own.
The worker hands SMTP this one address explicitly, whatever the headers say."""

from __future__ import annotations

import re

from shared.contracts import CUSTOMER_ID_MAX_LENGTH, CUSTOMER_ID_PATTERN, PoisonMessageError


class UnaddressableError(PoisonMessageError, ValueError):
    """The customer id cannot make an email address. Poison: no retry can change that."""


# --8<-- [start:customer-address]
def customer_address(customer_id: str, domain: str) -> str:
    """``<customer_id>@<domain>``, for a customer id the order API would accept; else
    :class:`UnaddressableError`."""
    if len(customer_id) > CUSTOMER_ID_MAX_LENGTH or not re.fullmatch(
        CUSTOMER_ID_PATTERN, customer_id
    ):
        raise UnaddressableError(f"customer id {customer_id[:80]!r} cannot make an email address")
    return f"{customer_id}@{domain}"
    # --8<-- [end:customer-address]


def single_address(recipient: str) -> str:
    """``recipient`` if it is one plain address (as :func:`customer_address` makes them), else
    :class:`UnaddressableError`: a notification recorded by an older Warren is checked again."""
    local, _, domain = recipient.partition("@")
    if not domain or not re.fullmatch(r"[A-Za-z0-9.-]+", domain):
        raise UnaddressableError(f"{recipient[:80]!r} is not one email address")
    customer_address(local, domain)
    return recipient
