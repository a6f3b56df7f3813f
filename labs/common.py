"""What every lab shares: the two messages, a tally of who got what, a deadline, the CLI.

The labs are not part of Warren's services and import nothing from them: each module is one
pattern on one broker, short enough to read beside its neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pydantic import BaseModel, Field

# Where the brokers are. Each lab takes --url too; these are the defaults on this machine.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
LABS_RABBIT_URL = os.environ.get("LABS_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/warren-labs")
KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092")
# Unset: the SQS labs start moto's server themselves (labs/sqs/moto_server.py).
SQS_ENDPOINT = os.environ.get("SQS_ENDPOINT")

# The card that always fails: the work queue's one bad message.
POISON_CARD = "tok_poison"

Say = Callable[[str], None]


def quiet(_: str) -> None:
    """A `say` that prints nothing (the tests and the comparison script use it)."""


# --8<-- [start:messages]
class OrderPlaced(BaseModel):
    """The pub/sub event: every subscriber gets its own copy."""

    order_id: int
    sent_at: float = Field(default_factory=time.time)


class ChargeCard(BaseModel):
    """The work-queue job: exactly one worker should do it. `tok_poison` always fails."""

    order_id: int
    card: str = "tok_visa"
    sent_at: float = Field(default_factory=time.time)


# --8<-- [end:messages]


class CardDeclinedForever(Exception):
    """What the handler raises for the poison card, every time."""


def charge(job: ChargeCard) -> None:
    """The work itself: instant, except for the card that always fails."""
    if job.card == POISON_CARD:
        raise CardDeclinedForever(f"order {job.order_id}: {job.card} fails every time")


class Tally:
    """Who received which message id, in arrival order (duplicates kept, to be counted), and
    how long each took from its creation (`sent_at`) to its handler."""

    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.delays: list[float] = []

    def add(self, who: str, message_id: int, sent_at: float | None = None) -> None:
        self.seen[who].append(message_id)
        if sent_at is not None:
            self.delays.append(time.time() - sent_at)

    def count(self, who: str) -> int:
        return len(self.seen.get(who, ()))

    def total(self) -> int:
        return sum(len(ids) for ids in self.seen.values())

    def reached(self, expected: dict[str, int]) -> bool:
        """Everyone named has at least their count (more would be duplicates, for the tests)."""
        return all(self.count(who) >= n for who, n in expected.items())

    def counts(self) -> dict[str, int]:
        return {who: len(ids) for who, ids in sorted(self.seen.items())}

    def duplicates(self) -> int:
        """Messages received more than once, by anyone (the work queue wants 0)."""
        every = [i for ids in self.seen.values() for i in ids]
        return len(every) - len(set(every))


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str | Callable[[], str],
    workers: Iterable[asyncio.Task[Any]] = (),
) -> float:
    """Poll `condition` until it holds; return the seconds it took. Raise past `timeout`, or
    as soon as one of `workers` (tasks that should run for ever) has failed. `what` names
    the outcome in the error (a callable: evaluated then, to show how far it got)."""
    start = time.monotonic()
    while True:
        outcome = condition()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - start
        for task in workers:
            if task.done():
                task.result()  # raises the worker's exception
                raise RuntimeError(f"{what}: a worker stopped")
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what() if callable(what) else what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.02)


def unique(name: str) -> str:
    """A fresh name per run, so that runs never see each other's messages."""
    return f"lab-{name}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, inclusive method."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def lab_parser(doc: str | None, spec: Any) -> argparse.ArgumentParser:
    """The labs' shared CLI: `--help` shows the module's docstring (`spec` is its __spec__)."""
    return argparse.ArgumentParser(
        prog=f"python -m {spec.name}" if spec else None,
        description=(doc or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
