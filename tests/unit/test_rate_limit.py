"""Token buckets: a burst, then the rate; each key its own bucket; memory bounded."""

from __future__ import annotations

import pytest

from shared.ratelimit import TokenBuckets, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_rate_holds_and_the_wait_is_exact() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token at 2/s
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)  # a refusal takes nothing
    clock.now += 0.25
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)


def test_an_idle_bucket_refills_to_the_burst_and_no_further() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=2, clock=clock)
    buckets.take("a")
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_each_key_has_its_own_bucket() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=Clock())
    assert buckets.take("bugs-bunny") == 0.0
    assert buckets.take("bugs-bunny") > 0
    assert buckets.take("daffy-duck") == 0.0


def test_made_up_keys_cannot_grow_memory_past_the_bound() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=100, clock=Clock())
    for i in range(10_000):
        buckets.take(f"customer-{i}")
    assert len(buckets) == 100


def test_a_bucket_without_a_rate_or_a_burst_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBuckets(rate=1, burst=0)


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert [retry_after(w) for w in (0.01, 1.0, 1.2, 9.99)] == ["1", "1", "2", "10"]
