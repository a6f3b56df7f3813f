import os
import socket

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.sealing import private_keys_from_text
from shared.settings import WarrenSettings


# --8<-- [start:payment-settings]
class PaymentSettings(WarrenSettings):
    service_name: str = "payment"
    port: int = 8002
    # Small prefetch: N replicas share one queue fairly (competing consumers).
    prefetch: int = Field(default=4, ge=1)
    # Demo knobs for the simulated gateway.
    payment_decline_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    payment_latency_ms: int = Field(default=0, ge=0)
    # Transient gateway errors (retried with backoff), to watch retries happen.
    payment_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # Which replica charged an order: recorded with the payment, to see competing consumers.
    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # --8<-- [end:payment-settings]

    # --8<-- [start:token-keys]
    # A settings error must not print what was read: it would print the private keys.
    model_config = SettingsConfigDict(hide_input_in_errors=True)
    # The private keys that open sealed payment tokens, by key id (JSON: {"kid": "base64url"}):
    # the current one and those it replaced while tokens sealed for them may be in flight.
    # Only payment holds them (`warren keys generate`; rotation: docs/14-security.md).
    payment_token_keys: dict[str, SecretStr] = Field(min_length=1)
    # The key the order service seals for now: payment must hold it.
    payment_token_key_id: str = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _holds_the_current_key(self) -> "PaymentSettings":
        self.token_keys()  # each one is an X25519 key (the error names its id, not its value)
        if self.payment_token_key_id not in self.payment_token_keys:
            raise ValueError(
                f"PAYMENT_TOKEN_KEY_ID={self.payment_token_key_id!r} is not one of the keys in "
                f"PAYMENT_TOKEN_KEYS ({', '.join(sorted(self.payment_token_keys))})"
            )
        return self

    def token_keys(self) -> dict[str, X25519PrivateKey]:
        """Key id -> private key: what :func:`shared.sealing.unseal` opens tokens with."""
        return private_keys_from_text(
            {kid: key.get_secret_value() for kid, key in self.payment_token_keys.items()}
        )
        # --8<-- [end:token-keys]
