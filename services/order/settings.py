from pydantic import Field

from shared.settings import WarrenSettings


class OrderSettings(WarrenSettings):
    service_name: str = "order"
    port: int = 8000
    # How long POST /orders waits for inventory's quote before answering 503.
    quote_timeout_seconds: float = Field(default=2.0, gt=0)
    # The outbox relay is woken after every write; this sweep catches anything missed.
    outbox_sweep_seconds: float = Field(default=2.0, gt=0)
    # An event the broker refuses this many times (unroutable, nacked) is parked for an operator.
    outbox_max_attempts: int = Field(default=10, ge=1)
    # The saga deadline: an order not final this long after it was placed is cancelled, and
    # its cancellation compensates (stock released, a charge refunded). Shorter than the retry
    # budget, so that an order stuck behind retries is compensated before they run out.
    saga_deadline_seconds: float = Field(default=600.0, gt=0)
    # How often the order service looks for orders past their deadline.
    saga_sweep_seconds: float = Field(default=5.0, gt=0)
