"""Event contracts: the envelope, decoding, and schema snapshots that catch accidental changes.

A failing snapshot means a contract changed shape. If that was intended, bump the event's
VERSION when the change is not backward compatible, then refresh the snapshot with
``UPDATE_SNAPSHOTS=1 pytest tests/unit/test_contracts.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared.contracts import (
    EVENT_TYPES,
    RETIRED_EVENT_TYPES,
    Envelope,
    OrderPlaced,
    OrderPlacedV1,
    PoisonMessageError,
    PricedLine,
    Quote,
    QuoteRequest,
    StockReserved,
    decode_event,
)
from tests.support.sealing import sealed_token

SNAPSHOT = Path(__file__).parent / "snapshots" / "contracts.json"


def current_schemas() -> dict[str, object]:
    schemas: dict[str, object] = {
        f"{event_type}@v{version}": model.model_json_schema()
        for (event_type, version), model in sorted(EVENT_TYPES.items())
    }
    # Retired versions are still read from storage: their shape must not drift either.
    for (event_type, version), model in sorted(RETIRED_EVENT_TYPES.items()):
        schemas[f"{event_type}@v{version} (retired)"] = model.model_json_schema()
    schemas["Envelope"] = Envelope.model_json_schema()
    schemas["QuoteRequest"] = QuoteRequest.model_json_schema()
    schemas["Quote"] = Quote.model_json_schema()
    return schemas


def test_contract_schemas_match_the_snapshot() -> None:
    schemas = json.loads(json.dumps(current_schemas()))
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(schemas, indent=2, sort_keys=True) + "\n")
    assert schemas == json.loads(SNAPSHOT.read_text())


CARROT_TOKEN = sealed_token("order-1")


def carrot_order() -> OrderPlaced:
    return OrderPlaced(
        order_id="order-1",
        customer_id="bugs-bunny",
        lines=(PricedLine(sku="CARROT-MUG", quantity=2, unit_price_cents=1250),),
        total_cents=2500,
        sealed_payment_token=CARROT_TOKEN,
    )


def test_an_event_survives_the_wire() -> None:
    envelope = Envelope.wrap(carrot_order(), source="order", sequence=1)
    decoded, payload = decode_event(envelope.model_dump_json().encode())
    assert decoded == envelope
    assert payload == carrot_order()
    assert decoded.correlation_id == "order-1"


def test_wrap_with_a_fixed_id_makes_the_same_event_again() -> None:
    first = Envelope.wrap(carrot_order(), source="order", event_id="e-1")
    again = Envelope.wrap(carrot_order(), source="order", event_id="e-1")
    assert first.id == again.id == "e-1"


def test_causation_points_at_the_event_that_caused_it() -> None:
    placed = Envelope.wrap(carrot_order(), source="order")
    reserved = Envelope.wrap(
        StockReserved(
            order_id="order-1",
            lines=carrot_order().lines,
            amount_cents=2500,
            sealed_payment_token=carrot_order().sealed_payment_token,
        ),
        source="inventory",
        causation=placed,
    )
    assert reserved.causation_id == placed.id
    assert reserved.correlation_id == placed.correlation_id


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\x00\xff not json", "undecodable"),
        (b'{"type": "order.placed"}', "envelope fields missing"),
        (
            Envelope(type="order.placed", source="t", correlation_id="o", data={"order_id": "o"})
            .model_dump_json()
            .encode(),
            "payload fields missing",
        ),
        (
            Envelope(type="order.exploded", source="t", correlation_id="o", data={"order_id": "o"})
            .model_dump_json()
            .encode(),
            "unknown type",
        ),
        (
            Envelope.wrap(carrot_order(), source="t")
            .model_copy(update={"version": 99})
            .model_dump_json()
            .encode(),
            "unknown version",
        ),
    ],
)
def test_poison_messages_are_recognised(body: bytes, why: str) -> None:
    with pytest.raises(PoisonMessageError):
        decode_event(body)


def test_quote_sums_known_lines_and_names_unknown_ones() -> None:
    quote = Quote.model_validate(
        {
            "lines": [
                {
                    "sku": "CARROT-MUG",
                    "quantity": 2,
                    "known": True,
                    "unit_price_cents": 1250,
                    "available": 9,
                },
                {"sku": "NOPE", "quantity": 1, "known": False},
            ]
        }
    )
    assert quote.total_cents == 2500
    assert quote.unknown_skus == ["NOPE"]


def test_a_reader_tolerates_fields_added_within_the_major_version() -> None:
    """A rolling deploy: the producer already sends a new field, the consumer is older."""
    wire = Envelope.wrap(carrot_order(), source="order").model_dump(mode="json")
    wire["partition_key"] = "order-1"  # a new envelope field
    wire["data"]["gift_wrap"] = True  # a new payload field
    decoded, payload = decode_event(json.dumps(wire).encode())
    assert payload == carrot_order()
    assert decoded.version == OrderPlaced.VERSION == 2


def test_an_unknown_major_version_is_poison_even_when_its_fields_look_familiar() -> None:
    wire = Envelope.wrap(carrot_order(), source="order").model_dump(mode="json")
    wire["version"] = 3
    with pytest.raises(PoisonMessageError, match="version 3"):
        decode_event(json.dumps(wire).encode())


# --8<-- [start:v1-in-flight]
def test_a_v1_order_placed_left_in_a_queue_at_the_upgrade_is_poison() -> None:
    """v1 carried the payment token in clear; the bus knows v2 only. A v1 message still queued
    when the services were upgraded is dead-lettered with its version in the reason (and the
    saga deadline cancels its order): drain the queues before upgrading."""
    v1 = OrderPlacedV1(
        order_id="order-1",
        customer_id="bugs-bunny",
        lines=carrot_order().lines,
        total_cents=2500,
        payment_token="tok_visa",
    )
    wire = Envelope.wrap(v1, source="order").model_dump_json().encode()
    with pytest.raises(PoisonMessageError, match=r"'order\.placed' version 1") as refused:
        decode_event(wire)
    assert "tok_visa" not in str(refused.value)
    # It stays readable where it was stored: the order service's own event store.
    assert Envelope.model_validate_json(wire).payload(RETIRED_EVENT_TYPES) == v1
    # --8<-- [end:v1-in-flight]


def test_a_poison_reason_names_the_faulty_fields_never_their_values() -> None:
    """The reason goes into a DLQ header and a log line: no token, no address in it."""
    wire = Envelope.wrap(carrot_order(), source="order").model_dump(mode="json")
    wire["data"]["sealed_payment_token"] = "tok_visa"  # a clear token where a sealed one goes
    wire["data"]["customer_id"] = ["daffy@customers.warren.example"]
    with pytest.raises(PoisonMessageError) as refused:
        decode_event(json.dumps(wire).encode())
    reason = str(refused.value)
    assert "sealed_payment_token" in reason and "customer_id" in reason
    assert "tok_visa" not in reason and "@" not in reason
