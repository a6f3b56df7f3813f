"""The audit's business function, and its handler table: any event in, one record of its
arrival written, nothing out.

One handler for every event class of the contracts: the audit does the same with each --
record who published it and how it came, never its data. It acts on no event, which is why
its consumer may hand it a forged one too (``records_forgeries`` on its queue): the record
then carries the verdict, ``forged: <reason>``, where every other consumer dead-letters it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.audit.domain import trail_entry
from services.audit.repository import AuditTrail
from shared import topology
from shared.contracts import Envelope, EventData
from shared.handlers import HandlerTable
from shared.messaging import Provenance, current_provenance, handled_before


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AuditDeps:
    trail: AuditTrail
    # Who published the event being handled, and the verdict: what the broker consumer
    # verified (shared.messaging; None on the in-memory bus, where nobody verifies).
    provenance: Callable[[], Provenance | None] = field(default=current_provenance)
    clock: Callable[[], datetime] = field(default=_now)


# --8<-- [start:record-event]
async def record_event(envelope: Envelope, event: EventData, deps: AuditDeps) -> list[Envelope]:
    """Record this arrival: who published the event (verified, or the forgery's verdict), how
    it came, when -- not its data. Idempotent: a redelivery finds its record and leaves it."""
    entry = trail_entry(envelope, deps.provenance(), deps.clock())
    if await deps.trail.record(entry) is not entry:
        handled_before()  # a redelivery: its arrival was recorded already
    return []
    # --8<-- [end:record-event]


# --8<-- [start:handler-table]
HANDLERS: HandlerTable[AuditDeps] = {
    topology.AUDIT_EVENTS: dict.fromkeys(topology.AUDIT_EVENTS.events, record_event),
}
# --8<-- [end:handler-table]
