"""Inventory's reservation rules, pure: claims and leases, settling in any order, duplicates."""

from __future__ import annotations

import pytest

from services.inventory.domain import (
    Action,
    Placement,
    Reservation,
    ReservationState,
    merge_lines,
    on_order_placed,
    settle,
)
from shared.contracts import (
    OrderCancelled,
    PaymentFailed,
    PaymentSucceeded,
    PricedLine,
)

NOW = 1_000.0
PAID = PaymentSucceeded(order_id="o1", payment_id="ch_1", amount_cents=2500)
DECLINED = PaymentFailed(order_id="o1", reason="card declined")
CANCELLED = OrderCancelled(order_id="o1", customer_id="bugs-bunny", reason="saga deadline passed")


def reservation(
    state: ReservationState, owner: str = "a", lease_until: float = NOW + 30
) -> Reservation:
    return Reservation(
        order_id="o1", state=state, lines={"CARROT-MUG": 2}, owner=owner, lease_until=lease_until
    )


def test_the_same_sku_on_two_lines_is_one_hold_and_skus_are_held_in_one_order() -> None:
    lines = [
        PricedLine(sku="CARROT-MUG", quantity=1, unit_price_cents=1),
        PricedLine(sku="BURROW-LAMP", quantity=1, unit_price_cents=1),
        PricedLine(sku="CARROT-MUG", quantity=2, unit_price_cents=1),
    ]
    assert list(merge_lines(lines).items()) == [("BURROW-LAMP", 1), ("CARROT-MUG", 3)]


def test_only_the_owner_of_a_live_claim_decides() -> None:
    live = reservation(ReservationState.DECIDING, owner="a")
    assert on_order_placed(live, "a", NOW) == Placement.DECIDE
    assert on_order_placed(live, "b", NOW) == Placement.WAIT  # a duplicate, meanwhile
    # The owner stalled past its lease: it may not go on (the claim is up for takeover).
    assert on_order_placed(live, "a", NOW + 31) == Placement.WAIT
    assert live.claim_expired(NOW + 30) and not live.claim_expired(NOW + 29)


@pytest.mark.parametrize("state", sorted(set(ReservationState) - {ReservationState.DECIDING}))
def test_a_redelivered_order_placed_re_announces_whatever_was_decided(
    state: ReservationState,
) -> None:
    assert on_order_placed(reservation(state), "b", NOW) == Placement.ANNOUNCE


@pytest.mark.parametrize(
    ("state", "outcome", "action"),
    [
        # the saga in order
        (ReservationState.RESERVED, PAID, Action.COMMIT),
        (ReservationState.RESERVED, DECLINED, Action.RELEASE),
        # duplicates: done before, nothing moves
        (ReservationState.COMMITTED, PAID, Action.NOTHING),
        (ReservationState.RELEASED, DECLINED, Action.NOTHING),
        # a crash half-way through a release: carry on
        (ReservationState.RELEASING, DECLINED, Action.RELEASE),
        # out of order: an outcome before the decision waits (retried)
        (None, PAID, Action.WAIT),
        (ReservationState.DECIDING, DECLINED, Action.WAIT),
        # the saga deadline: cancelled whatever the stage
        (None, CANCELLED, Action.CANCEL),
        (ReservationState.RESERVED, CANCELLED, Action.RELEASE),
        (ReservationState.COMMITTED, CANCELLED, Action.RETURN),
        (ReservationState.RELEASING, CANCELLED, Action.RELEASE),
        (ReservationState.REJECTED, CANCELLED, Action.NOTHING),
        (ReservationState.RETURNED, CANCELLED, Action.NOTHING),
        (ReservationState.CANCELLED, CANCELLED, Action.NOTHING),
        # ... and a payment outcome arriving after the cancellation changes nothing
        (ReservationState.RELEASED, PAID, Action.NOTHING),
        (ReservationState.CANCELLED, PAID, Action.NOTHING),
        (ReservationState.RETURNED, DECLINED, Action.NOTHING),
    ],
)
def test_settling_is_a_state_machine_that_ignores_duplicates_and_late_events(
    state: ReservationState | None, outcome: object, action: Action
) -> None:
    current = reservation(state) if state is not None else None
    assert settle(current, outcome, NOW) == action  # type: ignore[arg-type]


def test_a_cancellation_waits_for_a_live_decision_but_takes_over_a_dead_one() -> None:
    deciding = reservation(ReservationState.DECIDING, lease_until=NOW + 5)
    assert settle(deciding, CANCELLED, NOW) == Action.WAIT
    assert settle(deciding, CANCELLED, NOW + 5) == Action.CANCEL
