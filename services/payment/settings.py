import os
import socket

from pydantic import Field

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
