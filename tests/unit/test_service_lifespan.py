"""The one lifespan every service runs: what starts before consuming, what stops after the
handlers in flight finished, and a background loop that dies is not a silent one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared import service
from shared.service import Lifecycle, Runtime, lifespan, liveness
from shared.settings import WarrenSettings


class Recorder:
    """Stands in for the broker and the database client: records what was called, in order."""

    def __init__(self, calls: list[str], name: str) -> None:
        self.calls, self.name = calls, name

    async def start(self) -> None:
        self.calls.append(f"{self.name}.start")

    async def stop(self) -> None:
        self.calls.append(f"{self.name}.stop")

    async def close(self) -> None:
        self.calls.append(f"{self.name}.close")

    async def ping(self, timeout: float) -> bool:
        self.calls.append(f"{self.name}.ping")
        return True


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    recorded: list[str] = []

    async def dependencies(*_: Any) -> None:
        recorded.append("dependencies")

    async def declare(*_: Any) -> None:
        recorded.append("topology")

    monkeypatch.setattr(service, "wait_for_dependencies", dependencies)
    monkeypatch.setattr(service.topology, "declare_topology", declare)
    return recorded


def runtime_of(calls: list[str]) -> Runtime:
    return Runtime(
        settings=WarrenSettings(),
        client=Recorder(calls, "database"),  # type: ignore[arg-type]
        db=None,  # type: ignore[arg-type]
        broker=Recorder(calls, "broker"),  # type: ignore[arg-type]
    )


async def test_hooks_run_before_consuming_and_after_the_handlers_in_flight(
    calls: list[str],
) -> None:
    async def indexes() -> None:
        calls.append("indexes")

    async def sweeper() -> None:
        calls.append("sweeper")
        await asyncio.Event().wait()  # until cancelled

    async def close_clients() -> None:
        calls.append("close clients")

    hooks = Lifecycle(on_startup=[indexes], background=[sweeper], on_shutdown=[close_clients])
    async with lifespan(runtime_of(calls), hooks)(None):
        await asyncio.sleep(0)  # the sweeper starts
    assert calls == [
        "dependencies",
        "topology",
        "indexes",
        "broker.start",
        "sweeper",
        "broker.stop",  # handlers in flight finish first: they may still need the clients
        "close clients",
        "database.close",
    ]


async def test_a_background_loop_that_dies_fails_the_liveness_check(calls: list[str]) -> None:
    async def relay() -> None:
        raise RuntimeError("bug in the relay")

    runtime = runtime_of(calls)
    async with lifespan(runtime, Lifecycle(background=[relay]))(None):
        for _ in range(3):
            await asyncio.sleep(0)
        status, body = await liveness(runtime)
    assert status == 503
    assert "relay" in body["status"] and "bug in the relay" in body["status"]
    assert "broker.ping" not in calls  # no need to ask: the service is broken
