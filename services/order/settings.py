from pydantic import Field, field_validator

from shared.auth import TokenSettings
from shared.sealing import RecipientKey, public_key_from_text
from shared.settings import WarrenSettings


# TokenSettings: API_TOKEN_SECRET, the key the API's bearer tokens are verified with
# (shared/auth.py). Settings errors of this class never show the value refused.
class OrderSettings(WarrenSettings, TokenSettings):
    service_name: str = "order"
    port: int = 8000
    # How long POST /orders waits for inventory's quote before answering 503.
    quote_timeout_seconds: float = Field(default=2.0, gt=0)
    # The outbox relay is woken after every write; this sweep catches anything missed.
    outbox_sweep_seconds: float = Field(default=2.0, gt=0)
    # Replicas share the outbox: each publishes the events it saved, and renews a lease three
    # times per lease. Events of a replica silent this long are adopted by another.
    outbox_lease_seconds: float = Field(default=15.0, gt=0)
    # An event the broker refuses this many times (unroutable, nacked) is parked for an operator.
    outbox_max_attempts: int = Field(default=10, ge=1)
    # The saga deadline: an order not final this long after it was placed is cancelled, and
    # its cancellation compensates (stock released, a charge refunded). Shorter than the retry
    # budget, so that an order stuck behind retries is compensated before they run out.
    saga_deadline_seconds: float = Field(default=600.0, gt=0)
    # How often the order service looks for orders past their deadline.
    saga_sweep_seconds: float = Field(default=5.0, gt=0)
    # --8<-- [start:api-limits]
    # A request body larger than this is refused with 413 before it is read (MAX_BODY_BYTES).
    # An order of 50 lines is about 3 KiB.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Token buckets per client address (every request but the health probes) and per customer
    # (POST /orders); past them, 429 with Retry-After. In this process only: each replica counts
    # for itself. Generous for the load tools, which run from one address: lower them where each
    # address is one shopper (docs/14-security.md).
    requests_per_second_per_address: float = Field(default=500.0, gt=0)
    request_burst_per_address: int = Field(default=1000, ge=1)
    orders_per_minute_per_customer: float = Field(default=60.0, gt=0)
    order_burst_per_customer: int = Field(default=20, ge=1)
    # --8<-- [end:api-limits]
    # --8<-- [start:token-key]
    # The payment token is sealed for payment's public key (`warren keys generate`): order can
    # seal, never open. The key id travels with each sealed token, so payment knows which of its
    # private keys opens it (rotation: docs/14-security.md).
    payment_token_key_id: str = Field(min_length=1, max_length=64)
    payment_token_public_key: str

    @field_validator("payment_token_public_key")
    @classmethod
    def _an_x25519_public_key(cls, value: str) -> str:
        public_key_from_text(value)  # raises with what is wrong (a public key: not secret)
        return value

    def payment_token_recipient(self) -> RecipientKey:
        """Payment's key, as the order service seals tokens for it."""
        return RecipientKey(
            self.payment_token_key_id, public_key_from_text(self.payment_token_public_key)
        )
        # --8<-- [end:token-key]
