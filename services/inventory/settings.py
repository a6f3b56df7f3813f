from pydantic import Field, model_validator

from services.inventory.repository import DECISION_LEASE_SECONDS
from shared.settings import WarrenSettings


class InventorySettings(WarrenSettings):
    service_name: str = "inventory"
    port: int = 8001
    # How long a delivery of order.placed may decide its reservation before another delivery
    # may take over (the first died or froze). The owner renews it before every write.
    decision_lease_seconds: float = Field(default=DECISION_LEASE_SECONDS, gt=0)

    # --8<-- [start:lease-check]
    @model_validator(mode="after")
    def _lease_shorter_than_the_retry_budget(self) -> "InventorySettings":
        # A duplicate that finds a live claim is retried; if the retries ran out before the
        # lease, a claim left by a dead delivery would send the order.placed to the DLQ.
        budget = sum(self.retry_delays_seconds)
        if self.decision_lease_seconds >= budget:
            raise ValueError(
                f"DECISION_LEASE_SECONDS ({self.decision_lease_seconds:g} s) must be shorter "
                f"than the retry budget (RETRY_DELAYS_SECONDS add up to {budget} s)"
            )
        return self
        # --8<-- [end:lease-check]
