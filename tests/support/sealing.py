"""A payment key pair for tests that build ``order.placed`` / ``stock.reserved`` by hand."""

from __future__ import annotations

from shared.contracts import SealedValue
from shared.sealing import RecipientKey, generate_key

PAYMENT_KEY = generate_key()
PAYMENT_KEYS = {"test": PAYMENT_KEY}
"""What payment holds in these tests: key id -> private key."""
PAYMENT_RECIPIENT = RecipientKey("test", PAYMENT_KEY.public_key())
"""What order holds in these tests: payment's public key and its id."""


def sealed_token(order_id: str, token: str = "tok_visa") -> SealedValue:
    """``token`` sealed for payment's test key, for ``order_id``."""
    return PAYMENT_RECIPIENT.seal(token, aad=order_id)
