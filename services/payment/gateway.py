"""A simulated card gateway, idempotent like a real one: one charge per idempotency key.

Test tokens (after Stripe's): ``tok_visa`` always succeeds, ``tok_chargeDeclined`` and
``tok_insufficientFunds`` always decline. Any other token is declined with probability
``decline_rate`` -- decided by hashing the order id, so the same order always gets the same
answer. ``error_rate`` makes the gateway briefly unavailable (a transient error to retry).

The gateway keeps its own ``gateway_charges`` collection, **one document per call**, as a real
gateway's dashboard lists every request:

* the first call with an idempotency key creates the charge (``_id`` = the key): ``captured``
  (money moved) or ``declined``; a refund turns ``captured`` into ``refunded``;
* a later call with the same key moves no money and returns the first result; it is
  recorded as ``replayed``.

So a double charge is visible: two ``captured`` documents for one order mean the caller used
two keys for one payment. ``warren ledger`` counts them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from dataclasses import dataclass

from pymongo.asynchronous.database import AsyncDatabase

from shared.clock import utcnow_iso
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
    async def charge(
        self, order_id: str, amount_cents: int, token: str, *, idempotency_key: str
    ) -> ChargeResult:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if self.error_rate and random.random() < self.error_rate:
            raise GatewayUnavailableError("gateway timed out (simulated)")
        succeeded, reason = self._decide(order_id, token)
        charge = {
            "_id": idempotency_key,
            "order_id": order_id,
            "charge_id": f"ch_{uuid.uuid4().hex[:16]}",
            "status": "captured" if succeeded else "declined",
            "amount_cents": amount_cents if succeeded else 0,
            "reason": reason,
            "at": utcnow_iso(),
        }
        stands = await insert_first(self.charges, charge) or charge
        if stands is not charge:
            # Charged before with this key: the first result stands, no money moves again.
            await self.charges.insert_one(
                {
                    "_id": f"{idempotency_key}:replay:{uuid.uuid4().hex[:8]}",
                    "order_id": order_id,
                    "status": "replayed",
                    "replay_of": idempotency_key,
                    "at": utcnow_iso(),
                }
            )
        return ChargeResult(
            succeeded=stands["status"] in ("captured", "refunded"),
            charge_id=stands["charge_id"],
            reason=stands["reason"],
        )
        # --8<-- [end:gateway-charge]

    # --8<-- [start:gateway-refund]
    async def refund(self, idempotency_key: str) -> bool:
        """Give the money of a captured charge back (once). True if it is refunded now."""
        await self.charges.update_one(
            {"_id": idempotency_key, "status": "captured"},
            {"$set": {"status": "refunded", "refunded_at": utcnow_iso()}},
        )
        charge = await self.charges.find_one({"_id": idempotency_key}, {"status": 1})
        return charge is not None and charge["status"] == "refunded"
        # --8<-- [end:gateway-refund]
