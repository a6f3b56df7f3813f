"""A simulated card gateway, idempotent per order like a real one with idempotency keys.

Test tokens (after Stripe's): ``tok_visa`` always succeeds, ``tok_chargeDeclined`` and
``tok_insufficientFunds`` always decline. Any other token is declined with probability
``decline_rate`` -- decided by hashing the order id, so the same order always gets the same
answer. ``error_rate`` makes the gateway briefly unavailable (a transient error to retry).

The gateway keeps its own ``gateway_charges`` collection, keyed by order id: charging an
order twice returns the first result and never moves money again.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from dataclasses import dataclass

from pymongo.asynchronous.database import AsyncDatabase

from shared.mongo import insert_first

ALWAYS_SUCCEEDS = {"tok_visa"}
ALWAYS_DECLINES = {
    "tok_chargeDeclined": "card declined",
    "tok_insufficientFunds": "insufficient funds",
}


class GatewayUnavailableError(Exception):
    """The gateway did not answer; retrying later is safe (charges are idempotent)."""


@dataclass(frozen=True)
class ChargeResult:
    succeeded: bool
    charge_id: str
    reason: str = ""


def _fraction(order_id: str) -> float:
    digest = hashlib.sha256(order_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class SimulatedGateway:
    def __init__(
        self,
        db: AsyncDatabase,
        *,
        decline_rate: float = 0.0,
        latency_ms: int = 0,
        error_rate: float = 0.0,
    ) -> None:
        self.charges = db["gateway_charges"]
        self.decline_rate = decline_rate
        self.latency_ms = latency_ms
        self.error_rate = error_rate

    def _decide(self, order_id: str, token: str) -> tuple[bool, str]:
        if token in ALWAYS_SUCCEEDS:
            return True, ""
        if token in ALWAYS_DECLINES:
            return False, ALWAYS_DECLINES[token]
        if _fraction(order_id) < self.decline_rate:
            return False, "card declined (simulated decline rate)"
        return True, ""

    # --8<-- [start:gateway-charge]
    async def charge(self, order_id: str, amount_cents: int, token: str) -> ChargeResult:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if self.error_rate and random.random() < self.error_rate:
            raise GatewayUnavailableError("gateway timed out (simulated)")
        succeeded, reason = self._decide(order_id, token)
        document = {
            "_id": order_id,
            "charge_id": f"ch_{uuid.uuid4().hex[:16]}",
            "status": "captured" if succeeded else "declined",
            "amount_cents": amount_cents if succeeded else 0,
            "reason": reason,
        }
        # Charged before: the first result stands, no money moves again.
        document = await insert_first(self.charges, document) or document
        return ChargeResult(
            succeeded=document["status"] == "captured",
            charge_id=document["charge_id"],
            reason=document["reason"],
        )
        # --8<-- [end:gateway-charge]
