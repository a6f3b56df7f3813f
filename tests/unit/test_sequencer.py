"""The sequencer: a key's events offered in any order, duplicated or with holes, come out in
sequence order, once each; a hole is reported as a gap, never skipped silently."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from shared.ordering import (
    Gap,
    InMemorySequenceStore,
    KeyState,
    Outcome,
    Released,
    Sequencer,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Applier:
    """Offers events to a sequencer and applies what it releases, as a consumer would."""

    sequencer: Sequencer[tuple[str, int]]
    applied: dict[str, list[int]] = field(default_factory=dict)
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    gaps: list[Gap] = field(default_factory=list)

    def offer(self, key: str, sequence: int, previous: int | None = None) -> Outcome:
        offered = self.sequencer.offer(key, sequence, (key, sequence), previous)
        self.outcomes[offered.outcome] += 1
        self.apply(offered)
        return offered.outcome

    def apply(self, released: Released[tuple[str, int]]) -> None:
        for key, sequence in released.ready:
            self.applied.setdefault(key, []).append(sequence)
        self.gaps += released.gaps


def test_applies_a_stream_that_arrives_in_order() -> None:
    applier = Applier(Sequencer())
    outcomes = [applier.offer("order-wile", n) for n in range(1, 6)]
    assert outcomes == [Outcome.READY] * 5
    assert applier.applied == {"order-wile": [1, 2, 3, 4, 5]}
    assert applier.sequencer.state("order-wile") == KeyState(last_applied=5)


def test_an_early_event_waits_for_its_predecessor() -> None:
    applier = Applier(Sequencer())
    assert applier.offer("order-wile", 2) is Outcome.HELD
    assert applier.offer("order-wile", 3) is Outcome.HELD
    assert applier.applied == {}
    assert applier.sequencer.held == 2
    assert applier.offer("order-wile", 1) is Outcome.READY
    assert applier.applied == {"order-wile": [1, 2, 3]}
    assert applier.sequencer.held == 0


@pytest.mark.parametrize("seed", [1, 2, 3, 42, 2024])
def test_shuffled_streams_of_many_keys_come_out_in_sequence_order(seed: int) -> None:
    rng = random.Random(seed)
    keys = [f"order-{name}" for name in ("wile", "road", "bugs", "daffy", "porky", "tweety")]
    events = [(key, n) for key in keys for n in range(1, 13)]
    rng.shuffle(events)
    applier = Applier(Sequencer(max_held=12))
    for key, sequence in events:
        applier.offer(key, sequence)
    assert applier.applied == {key: list(range(1, 13)) for key in keys}
    assert applier.gaps == []
    assert applier.sequencer.held == 0


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_duplicates_are_ignored_and_counted(seed: int) -> None:
    rng = random.Random(seed)
    events = [("order-bugs", n) for n in range(1, 11)]
    copies = rng.sample(events, 4)  # a redelivery, a replay from the DLQ...
    stream = events + copies
    rng.shuffle(stream)
    applier = Applier(Sequencer())
    for key, sequence in stream:
        applier.offer(key, sequence)
    assert applier.applied == {"order-bugs": list(range(1, 11))}
    assert applier.outcomes[Outcome.DUPLICATE] == 4
    # Whether the copy came while the original was held or after it was applied.
    assert applier.offer("order-bugs", 3) is Outcome.DUPLICATE


def test_too_many_held_back_is_reported_as_a_gap_then_applied_in_order() -> None:
    applier = Applier(Sequencer(max_held=3))
    for sequence in (1, 2, 3, 5, 6, 7):  # 4 is missing
        assert applier.offer("order-daffy", sequence) in (Outcome.READY, Outcome.HELD)
    assert applier.applied == {"order-daffy": [1, 2, 3]}
    assert applier.gaps == []
    assert applier.offer("order-daffy", 8) is Outcome.READY  # the fourth held: past the bound
    assert applier.gaps == [Gap("order-daffy", 4, 5, "more than 3 held back")]
    assert list(applier.gaps[0].missing) == [4]
    assert applier.applied == {"order-daffy": [1, 2, 3, 5, 6, 7, 8]}
    # The missing one turns up after all: late, not applied, and not mistaken for a copy.
    assert applier.offer("order-daffy", 4) is Outcome.LATE
    assert applier.offer("order-daffy", 6) is Outcome.DUPLICATE
    assert applier.sequencer.state("order-daffy") == KeyState(last_applied=8, skipped=((4, 5),))


def test_an_event_held_back_too_long_is_reported_as_a_gap_on_expiry() -> None:
    clock = FakeClock()
    applier = Applier(Sequencer(max_wait=5.0, clock=clock))
    for sequence in (1, 4, 5):  # 2 and 3 are missing
        applier.offer("order-porky", sequence)
    clock.now += 5.0
    assert applier.sequencer.expire() == Released()  # not past the bound yet
    clock.now += 0.1
    applier.apply(applier.sequencer.expire())
    assert applier.gaps == [Gap("order-porky", 2, 4, "held back longer than 5s")]
    assert list(applier.gaps[0].missing) == [2, 3]
    assert applier.applied == {"order-porky": [1, 4, 5]}


def test_a_late_offer_declares_the_gap_without_waiting_for_expiry() -> None:
    clock = FakeClock()
    applier = Applier(Sequencer(max_wait=5.0, clock=clock))
    applier.offer("order-porky", 2)
    clock.now += 6.0
    assert applier.offer("order-porky", 3) is Outcome.READY
    assert applier.gaps == [Gap("order-porky", 1, 2, "held back longer than 5s")]
    assert applier.applied == {"order-porky": [2, 3]}


def test_each_hole_is_its_own_gap() -> None:
    clock = FakeClock()
    applier = Applier(Sequencer(max_wait=1.0, clock=clock))
    for sequence in (3, 4, 7):  # 1, 2, 5 and 6 are missing
        applier.offer("order-tweety", sequence)
    clock.now += 2.0
    applier.apply(applier.sequencer.expire())
    assert [(gap.expected, gap.got) for gap in applier.gaps] == [(1, 3), (5, 7)]
    assert applier.applied == {"order-tweety": [3, 4, 7]}


def test_a_sparse_stream_follows_each_event_s_predecessor() -> None:
    # What a subscriber to order.* sees of the order stream: 2 and 5 are internal events.
    stream = [(1, 0), (3, 1), (4, 3), (6, 4), (7, 6)]
    for seed in range(5):
        shuffled = random.Random(seed).sample(stream, len(stream))
        applier = Applier(Sequencer())
        for sequence, previous in shuffled:
            applier.offer("order-road", sequence, previous)
        assert applier.applied == {"order-road": [1, 3, 4, 6, 7]}
        assert applier.gaps == []


def test_a_sparse_stream_without_predecessors_waits_for_numbers_that_never_come() -> None:
    clock = FakeClock()
    applier = Applier(Sequencer(max_wait=1.0, clock=clock))
    for sequence in (1, 3, 4):
        applier.offer("order-road", sequence)  # contiguous by default: 3 waits for 2
    assert applier.applied == {"order-road": [1]}
    clock.now += 2.0
    applier.apply(applier.sequencer.expire())
    assert applier.gaps == [Gap("order-road", 2, 3, "held back longer than 1s")]


def test_a_gap_in_a_sparse_stream_names_the_range_given_up_on() -> None:
    applier = Applier(Sequencer(max_held=1))
    applier.offer("order-road", 1, 0)
    applier.offer("order-road", 6, 4)  # 4 (and whatever came between) is missing
    applier.offer("order-road", 7, 6)
    assert applier.gaps == [Gap("order-road", 2, 6, "more than 1 held back")]
    assert applier.applied == {"order-road": [1, 6, 7]}
    assert applier.offer("order-road", 4, 1) is Outcome.LATE


async def test_a_new_consumer_resumes_from_the_saved_state() -> None:
    store = InMemorySequenceStore()
    first = Applier(Sequencer())
    for sequence in (1, 2, 4):
        first.offer("order-wile", sequence)
    await store.save("order-wile", first.sequencer.state("order-wile"))
    # The first consumer dies: its unapplied 4 and the unacked 2 come to the next one.
    second = Applier(Sequencer())
    assert not second.sequencer.knows("order-wile")
    second.sequencer.resume("order-wile", await store.load("order-wile"))
    assert second.offer("order-wile", 2) is Outcome.DUPLICATE
    assert second.offer("order-wile", 4) is Outcome.HELD
    assert second.offer("order-wile", 3) is Outcome.READY
    assert second.applied == {"order-wile": [3, 4]}


def test_resume_does_not_rewind_a_key_already_tracked() -> None:
    applier = Applier(Sequencer())
    applier.offer("order-wile", 1)
    applier.sequencer.resume("order-wile", KeyState())  # a saved state that lags behind
    assert applier.offer("order-wile", 1) is Outcome.DUPLICATE


async def test_the_store_never_moves_a_key_backwards() -> None:
    store = InMemorySequenceStore()
    await store.save("order-bugs", KeyState(last_applied=5))
    await store.save("order-bugs", KeyState(last_applied=3))  # a consumer finishing late
    assert await store.load("order-bugs") == KeyState(last_applied=5)
    assert await store.load("order-elmer") == KeyState()


def test_forgets_a_key_only_when_nothing_of_it_is_held() -> None:
    sequencer: Sequencer[str] = Sequencer()
    sequencer.offer("order-wile", 1, "placed")
    sequencer.offer("order-road", 2, "confirmed")
    assert sequencer.forget("order-wile")
    assert not sequencer.knows("order-wile")
    assert not sequencer.forget("order-road")
    assert not sequencer.forget("order-elmer")


@pytest.mark.parametrize(("sequence", "previous"), [(1, 1), (3, 5), (0, None), (2, -1)])
def test_an_event_must_follow_an_earlier_one(sequence: int, previous: int | None) -> None:
    with pytest.raises(ValueError, match="cannot follow"):
        Sequencer[str]().offer("order-wile", sequence, "x", previous)


def test_bounds_must_leave_room_to_wait() -> None:
    with pytest.raises(ValueError):
        Sequencer(max_held=0)
    with pytest.raises(ValueError):
        Sequencer(max_wait=0)
