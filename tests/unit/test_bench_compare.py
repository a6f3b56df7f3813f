"""``loadtests.compare``: a real worktree of an earlier commit, and the medians it prints
from results shaped as ``make bench`` writes them (no benchmark is run here)."""

from __future__ import annotations

import io
import subprocess
from typing import Any

import pytest
from rich.console import Console

from loadtests.compare import REPO, drop_worktree, medians, table, worktree


def result(order_ms: float, *, ops: float = 35.0, driver_ms: float = 5.0) -> dict[str, Any]:
    stage = {
        "offered_orders_s": 10.0,
        "cpu_ms_per_order": {
            "order": order_ms,
            "database (stand-in)": 40.0,
            "load driver (this process)": driver_ms,
        },
    }
    return {
        "saga": {"shipped": [{"stages": [stage]}]},
        "database_ceiling": {"ops_per_order": ops},
        "hops": {"warren": {"cpu_us_per_msg": 900.0}, "raw": {"cpu_us_per_msg": 400.0}},
        "noise": {"calibration_ms": [40.0, 44.0], "steal_s": 1.5},
    }


def test_each_row_is_the_median_of_the_runs_and_the_load_driver_is_left_out() -> None:
    rows = medians([result(20.0), result(30.0, driver_ms=50.0), result(24.0)])
    assert rows["shipped 10/s: order"]["median"] == 24.0
    assert rows["shipped 10/s: ALL"]["median"] == 64.0  # order + database, not the driver
    assert not any("load driver" in name for name in rows)
    assert rows["calibration loop (ms, mean of start and end)"]["median"] == 42.0


def test_the_table_shows_before_after_and_the_change() -> None:
    before, after = medians([result(20.0, ops=37.0)]), medians([result(15.0, ops=35.0)])
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table("abc123", before, after))
    rows = {line.split("│")[1].strip(): line.split("│")[2:6] for line in _rows(console)}
    assert [c.strip() for c in rows["shipped 10/s: order"]] == ["20.0", "15.0", "-25%", "1/1"]
    assert [c.strip() for c in rows["database commands per order"]] == [
        "37.0",
        "35.0",
        "-5%",
        "1/1",
    ]


def test_a_rate_only_one_side_reached_is_shown_not_dropped() -> None:
    faster = result(15.0)
    faster["saga"]["shipped"][0]["stages"].append(
        {"offered_orders_s": 20.0, "cpu_ms_per_order": {"order": 14.0}}
    )
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table("abc123", medians([result(20.0)]), medians([faster])))
    rows = {line.split("│")[1].strip(): line.split("│")[2:4] for line in _rows(console)}
    assert [c.strip() for c in rows["shipped 20/s: order"]] == ["--", "14.0"]


def _rows(console: Console) -> list[str]:
    return [line for line in console.export_text().splitlines() if line.count("│") == 6]


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs this project's git repository")
def test_the_base_commit_is_checked_out_beside_this_one_and_removed_after() -> None:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = worktree(head)
    try:
        assert (path / "loadtests" / "bench.py").is_file()
        checked_out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        assert checked_out == head
    finally:
        drop_worktree(path)
    assert not path.exists()
    listed = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True
    ).stdout
    assert str(path) not in listed
