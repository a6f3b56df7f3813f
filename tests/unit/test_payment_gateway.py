"""The simulated gateway's decisions (the charge itself is tested against the databases)."""

from __future__ import annotations

from services.payment.gateway import SimulatedGateway, _fraction


def gateway(decline_rate: float) -> SimulatedGateway:
    return SimulatedGateway({"gateway_charges": None}, decline_rate=decline_rate)  # type: ignore[arg-type]


def test_test_tokens_ignore_the_decline_rate() -> None:
    assert gateway(1.0)._decide("o1", "tok_visa") == (True, "")
    assert gateway(0.0)._decide("o1", "tok_chargeDeclined") == (False, "card declined")


def test_random_declines_are_a_stable_function_of_the_order() -> None:
    orders = [f"order-{i}" for i in range(2000)]
    first = [gateway(0.25)._decide(o, "tok_other")[0] for o in orders]
    again = [gateway(0.25)._decide(o, "tok_other")[0] for o in orders]
    assert first == again
    declined_share = first.count(False) / len(orders)
    assert 0.2 < declined_share < 0.3
    assert all(0 <= _fraction(o) < 1 for o in orders)
