"""A short `make chaos`: two scenarios with fewer orders, counted like the full suite.

The whole suite (`make chaos`, about 20 minutes) runs every scenario; these two are the ones
that attack the idempotency rules hardest -- duplicates delivered concurrently mid-saga, and
a consumer frozen past its lease while its messages are delivered to another replica.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.chaos import SCENARIOS, run_scenario


@pytest.mark.parametrize("name", ["duplicates", "frozen-consumer"])
async def test_a_short_chaos_run_loses_nothing_and_does_nothing_twice(
    name: str, rabbit_url: str, tmp_path: Path
) -> None:
    [scenario] = [s for s in SCENARIOS if s.name == name]
    result = await run_scenario(scenario, rabbit_url, tmp_path, quick=True)
    assert result.accepted > 0 and result.final == result.accepted, result
    assert (result.lost, result.duplicated, result.ledger_failures) == (0, 0, []), result
    if name == "duplicates":
        assert "delivered twice" in result.notes and not result.notes.startswith("0 "), result
