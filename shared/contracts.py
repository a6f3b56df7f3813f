"""Event and message contracts: defined once, imported by producers and consumers alike.

Every event travels in the same versioned :class:`Envelope`. Its ``data`` is validated
against the model registered for ``(type, version)``; an event whose type or version is not
registered is poison, never guessed at.

Readers are tolerant: ``version`` is the *major* version, and a field added within it (by a
producer deployed before its consumers, in a rolling deploy) is ignored, not rejected. A
change that old readers would misread -- a field removed, renamed or retyped -- bumps the
version, and a consumer that does not know it dead-letters the event.

Events are immutable facts in the past tense (``order.placed``); the routing key on
``shop.events`` is the event type.

Sensitive fields travel sealed (:class:`SealedValue`, :mod:`shared.sealing`): the payment token
is encrypted by order for payment's public key, so only payment can read it. That change made
``order.placed`` and ``stock.reserved`` version 2 (v1 carried ``payment_token`` in clear). The
bus knows v2 only: a v1 message still in a queue at the upgrade is poison, dead-lettered with
"no contract for event ... version 1", and its order is cancelled by the saga deadline. So
drain the queues before upgrading (docs/14-security.md says how). The v1 ``order.placed`` stays
readable from the order service's own event store (:data:`RETIRED_EVENT_TYPES`), where orders
placed before the upgrade keep it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


# --8<-- [start:tolerant-reader]
class Contract(BaseModel):
    """Base of every message body: immutable; unknown fields (added within the major version)
    are ignored, so one additive change does not dead-letter every message of a deploy."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    # --8<-- [end:tolerant-reader]


class OrderLine(Contract):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=1000)


# A customer id: letters, digits, '.', '_' and '-', a letter or a digit first. It ends up in an
# email address (notification mails <id>@<domain>) and in headers: the order API accepts
# nothing else, and notification addresses nothing else.
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
CUSTOMER_ID_MAX_LENGTH = 64


class PricedLine(Contract):
    sku: str
    quantity: int
    unit_price_cents: int


# --8<-- [start:sealed-value]
SEALING_ALGORITHM = "X25519-HKDF-SHA256-A256GCM"


class SealedValue(Contract):
    """A value that only one service can read: encrypted for that service's public key by
    :func:`shared.sealing.seal`, opened by :func:`shared.sealing.unseal` with the private key
    named ``kid``. Binary fields are base64url without padding."""

    alg: Literal["X25519-HKDF-SHA256-A256GCM"] = SEALING_ALGORITHM
    # Which of the recipient's keys it was sealed for: a recipient may hold several (rotation).
    kid: str = Field(min_length=1, max_length=64)
    # The sender's one-time X25519 public key (a fresh one for every value sealed).
    epk: str = Field(max_length=64)
    nonce: str = Field(max_length=64)
    # AES-256-GCM: the encrypted value and its 16-byte tag.
    ciphertext: str = Field(max_length=4096)
    # --8<-- [end:sealed-value]


# --- event payloads ------------------------------------------------------------------------


class EventData(Contract):
    """Payload of an event. ``TYPE`` is the routing key, ``VERSION`` the schema version."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    order_id: str


# --8<-- [start:order-placed]
class OrderPlaced(EventData):
    TYPE: ClassVar[str] = "order.placed"
    VERSION: ClassVar[int] = 2  # v1 carried payment_token in clear
    customer_id: str
    lines: tuple[PricedLine, ...]
    total_cents: int
    currency: str = "EUR"
    # The card token, sealed for payment's key with this order's id: nobody else can read it,
    # and it cannot be moved to another order.
    sealed_payment_token: SealedValue
    # --8<-- [end:order-placed]


class OrderConfirmed(EventData):
    TYPE: ClassVar[str] = "order.confirmed"
    customer_id: str
    total_cents: int


class OrderCancelled(EventData):
    TYPE: ClassVar[str] = "order.cancelled"
    customer_id: str
    reason: str


class StockReserved(EventData):
    TYPE: ClassVar[str] = "stock.reserved"
    VERSION: ClassVar[int] = 2  # v1 carried payment_token in clear
    lines: tuple[PricedLine, ...]
    amount_cents: int
    # Carried along (still sealed: inventory cannot read it) so that payment can charge
    # without reading the order's database.
    sealed_payment_token: SealedValue


class StockRejected(EventData):
    TYPE: ClassVar[str] = "stock.rejected"
    reason: str
    shortages: dict[str, int] = Field(default_factory=dict)


class StockReleased(EventData):
    TYPE: ClassVar[str] = "stock.released"
    reason: str


class PaymentSucceeded(EventData):
    TYPE: ClassVar[str] = "payment.succeeded"
    payment_id: str
    amount_cents: int


class PaymentFailed(EventData):
    TYPE: ClassVar[str] = "payment.failed"
    reason: str


EVENT_TYPES: dict[tuple[str, int], type[EventData]] = {
    (cls.TYPE, cls.VERSION): cls
    for cls in (
        OrderPlaced,
        OrderConfirmed,
        OrderCancelled,
        StockReserved,
        StockRejected,
        StockReleased,
        PaymentSucceeded,
        PaymentFailed,
    )
}


EventTypes = Mapping[tuple[str, int], type[EventData]]
"""(type, version) -> the event class: what a reader knows how to decode."""


class OrderPlacedV1(EventData):
    """``order.placed`` version 1, retired: the payment token in clear. Kept as it was, for the
    order service's event store only (orders placed before the upgrade); never on the bus."""

    TYPE: ClassVar[str] = "order.placed"
    customer_id: str
    lines: tuple[PricedLine, ...]
    total_cents: int
    currency: str = "EUR"
    payment_token: str


RETIRED_EVENT_TYPES: EventTypes = {(OrderPlacedV1.TYPE, OrderPlacedV1.VERSION): OrderPlacedV1}
"""Versions no longer published nor consumed, still readable where they were stored."""


class UnknownEventError(ValueError):
    """The envelope names a type or version that no contract is registered for."""


# --8<-- [start:envelope]
class Envelope(Contract):
    """The versioned envelope around every event on the bus."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    type: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: str
    # The order id: every event of one order shares it, whichever service emitted it.
    correlation_id: str
    # The id of the event that caused this one (None for the first event of a saga).
    causation_id: str | None = None
    # Position of this event among those its source emitted for this order: the order stream's
    # version for order events; 1 then 2 for inventory (decision, then settlement). Consumers
    # do not rely on arrival order -- their state machines and guards make it unnecessary --
    # but the sequence lets a reader (or a log) put an order's events back in order.
    sequence: int = 1
    # The sequence of the event its source published before this one for this order (0: none
    # before it). A source's sequences may skip numbers -- the order service numbers internal
    # events it never publishes -- so a reader that must apply an order's events in order
    # (notification: "received" before "confirmed") waits for this one, not for sequence - 1.
    # None: the source does not say (older publishers, sources whose order nobody needs).
    previous_sequence: int | None = None
    data: dict[str, Any]
    # --8<-- [end:envelope]

    @classmethod
    def wrap(
        cls,
        data: EventData,
        *,
        source: str,
        causation: Envelope | None = None,
        event_id: str | None = None,
        sequence: int = 1,
        previous_sequence: int | None = None,
        occurred_at: datetime | None = None,
    ) -> Envelope:
        """Put ``data`` in an envelope, at its class's type and version; ``event_id`` fixes the id
        so that a re-emission is the same event."""
        fields: dict[str, Any] = {}
        if event_id is not None:
            fields["id"] = event_id
        if occurred_at is not None:
            fields["occurred_at"] = occurred_at
        return cls(
            type=data.TYPE,
            version=data.VERSION,
            source=source,
            correlation_id=data.order_id,
            causation_id=causation.id if causation else None,
            sequence=sequence,
            previous_sequence=previous_sequence,
            data=data.model_dump(mode="json"),
            **fields,
        )

    @model_validator(mode="after")
    def _previous_comes_before(self) -> Envelope:
        # A predecessor at or after the event itself could never be handled first: poison.
        if self.previous_sequence is not None and not 0 <= self.previous_sequence < self.sequence:
            raise ValueError(
                f"previous_sequence {self.previous_sequence} must lie in 0..{self.sequence - 1}"
            )
        return self

    def payload(self, types: EventTypes = EVENT_TYPES) -> EventData:
        """The typed payload, by (type, version) in ``types`` (the bus's contracts by default);
        raises :class:`UnknownEventError` or ``ValidationError``."""
        model = types.get((self.type, self.version))
        if model is None:
            raise UnknownEventError(f"no contract for event {self.type!r} version {self.version}")
        return model.model_validate(self.data)


def decode_event(body: bytes | str | dict[str, Any]) -> tuple[Envelope, EventData]:
    """Parse and validate an event from the wire. Raises :class:`PoisonMessageError` on any fault."""
    try:
        envelope = (
            Envelope.model_validate(body)
            if isinstance(body, dict)
            else Envelope.model_validate_json(body)
        )
        return envelope, envelope.payload()
    except ValidationError as exc:
        # Which fields failed, and why, on one line for the DLQ header -- never their values
        # (pydantic's own message quotes them: a token or an address would end up in the header).
        raise PoisonMessageError(describe_errors(exc)[:1000]) from exc
    except (UnknownEventError, ValueError) as exc:
        raise PoisonMessageError(" | ".join(str(exc).splitlines())[:1000]) from exc


def describe_errors(exc: ValidationError) -> str:
    """What failed validation, where: ``data.lines.0.sku: Field required | ...``, no input."""
    return " | ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '(body)'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    )


class PoisonMessageError(Exception):
    """A message that can never be processed: undecodable, schema-invalid or of unknown type."""


# --- request-reply: the quote ---------------------------------------------------------------


class QuoteRequest(Contract):
    """Order asks inventory: are these SKUs known, at what price, how many are available?"""

    lines: tuple[OrderLine, ...] = Field(min_length=1)


class QuotedLine(Contract):
    sku: str
    quantity: int
    known: bool
    unit_price_cents: int = 0
    available: int = 0


class Quote(Contract):
    lines: tuple[QuotedLine, ...]

    @property
    def unknown_skus(self) -> list[str]:
        return [line.sku for line in self.lines if not line.known]

    @property
    def total_cents(self) -> int:
        return sum(line.unit_price_cents * line.quantity for line in self.lines)
