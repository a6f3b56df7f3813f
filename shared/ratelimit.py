"""Token buckets, one per key (a client address, a customer), kept in the process.

Each key's bucket holds at most ``burst`` tokens and refills at ``rate`` tokens a second; a
request takes one token or is refused with how long to wait. The buckets live in one process:
two API replicas give a client twice the rate. A limit that must hold across replicas needs
the buckets in a shared store (docs/14-security.md says what Redis would change).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


# --8<-- [start:token-buckets]
class TokenBuckets:
    """``rate`` requests a second per key, in bursts of at most ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        # key -> (tokens, when counted); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 if it had one, else the seconds until it will."""
        now = self.clock()
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        # Bounded memory, whatever keys a client makes up: forgetting the key used longest
        # ago gives it a full bucket, which it would mostly have refilled by now anyway.
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)
        # --8<-- [end:token-buckets]


def retry_after(wait: float) -> str:
    """The ``Retry-After`` header for a wait: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait)))
