"""Before and after a change: the benchmark run from two commits in alternation, side by side.

One lever rarely moves the CPU per order by more than the noise of a shared machine, so a
lever is measured the way chapter 11 reads its numbers: the code before (``BASE``, a commit)
and the working tree, run one after the other (ABBA, ``--pairs`` times), with the same
benchmark options, on the same broker and machine. The commit is checked out in a git
worktree of its own, whose processes run its code (its directory first on ``PYTHONPATH``) with
this virtualenv; which side goes first alternates (ABBA), so that a host that slows down
steadily does not count against one side. The results go to ``--output`` (one JSON per run, as
``make bench`` writes them) and a table is printed: the median of each side's runs, per
process, at each offered rate both sides ran (a step that was not sustained included: its CPU
per order is still a count), with the database commands per order, one hop's CPU and the
calibration loop.

    python -m loadtests.compare HEAD~1 -- --modes shipped --rates 10,15 --shares "" --no-burst
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from loadtests.bench import cpu_budget

REPO = Path(__file__).resolve().parents[1]
console = Console()


def worktree(rev: str) -> Path:
    """A checkout of ``rev`` beside this one (removed by :func:`drop_worktree`)."""
    path = Path(tempfile.mkdtemp(prefix="warren-base-"))
    added = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(path), rev],
        capture_output=True,
        text=True,
    )
    if added.returncode:
        shutil.rmtree(path, ignore_errors=True)
        raise SystemExit(f"cannot check {rev} out: {added.stderr.strip()}")
    return path


def drop_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True
    )
    shutil.rmtree(path, ignore_errors=True)


def run_bench(checkout: Path, output: Path, bench_args: list[str]) -> dict[str, Any]:
    """``make bench``'s script, from ``checkout``: its code (the ``warren`` commands it runs
    too, which the editable install would otherwise take from this tree), this interpreter."""
    command = [sys.executable, "-m", "loadtests.bench", "--output", str(output), *bench_args]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    subprocess.run(command, cwd=checkout, check=True, env=env)
    return json.loads(output.read_text())


def env_differs() -> bool:
    """Whether this tree's ``.env`` differs from the committed one (the base gets its own)."""
    return (
        subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", ".env"]).returncode
        != 0
    )


def steps(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(mode, load step) of every step of the first pass, of every run (``--repeats``) of
    every mode."""
    return [
        (mode, stage)
        for mode, runs in result["saga"].items()
        for run in runs
        for stage in run["stages"]
    ]


def others(result: dict[str, Any]) -> dict[str, float]:
    """The figures beside the saga's: database commands per order, one hop, the noise."""
    hops, noise = result["hops"], result["noise"]
    return {
        "database commands per order": result["database_ceiling"]["ops_per_order"],
        "one hop, Warren (µs CPU per message)": hops["warren"]["cpu_us_per_msg"],
        "one hop, aio-pika (µs CPU per message)": hops["raw"]["cpu_us_per_msg"],
        "calibration loop (ms, mean of start and end)": statistics.mean(noise["calibration_ms"]),
        "CPU stolen (s)": noise["steal_s"],
    }


def medians(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per row (a process at a stage, or another figure), the median over the runs."""
    rows: dict[str, list[float]] = {}
    for result in results:
        for mode, stage in steps(result):
            step = f"{mode} {stage['offered_orders_s']:g}/s"
            spent, _ = cpu_budget(stage)  # the load driver apart: it is not the system
            for process, ms in {**spent, "ALL": sum(spent.values())}.items():
                rows.setdefault(f"{step}: {process}", []).append(ms)
        for name, value in others(result).items():
            rows.setdefault(name, []).append(value)
    return {name: {"median": statistics.median(v), "n": len(v)} for name, v in rows.items()}


def table(base_rev: str, base: dict[str, Any], this: dict[str, Any]) -> Table:
    out = Table(title=f"{base_rev} (before) against the working tree (after): medians")
    out.add_column("measure")
    out.add_column("before", justify="right")
    out.add_column("after", justify="right")
    out.add_column("change", justify="right")
    out.add_column("runs", justify="right")
    for name in sorted(base.keys() | this.keys()):
        if name not in base or name not in this:  # a rate only one side reached
            out.add_row(name, *(_cell(side.get(name)) for side in (base, this)), "", "")
            continue
        before, after = base[name]["median"], this[name]["median"]
        change = f"{(after - before) / before:+.0%}" if before else ""
        runs = f"{base[name]['n']}/{this[name]['n']}"
        out.add_row(name, f"{before:,.1f}", f"{after:,.1f}", change, runs)
    return out


def _cell(row: dict[str, float] | None) -> str:
    return "--" if row is None else f"{row['median']:,.1f}"


def main(
    base_rev: str = typer.Argument(..., metavar="BASE", help="The commit before the change."),
    pairs: int = typer.Option(2, min=1, help="Runs of each side, alternating (ABBA...)."),
    output: Path = typer.Option(Path("reports/compare"), help="Where each run's JSON goes."),
    bench_args: list[str] = typer.Argument(
        None, metavar="-- BENCH OPTIONS", help="Passed to loadtests.bench (after a --)."
    ),
) -> None:
    """Run the benchmark from BASE and from the working tree in alternation; print both."""
    output.mkdir(parents=True, exist_ok=True)
    if env_differs():
        console.print("[yellow]note:[/] .env has uncommitted changes: only the after side has them")
    checkout = worktree(base_rev)
    sides = {"before": checkout, "after": REPO}
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    try:
        for pair in range(1, pairs + 1):
            order = ("before", "after") if pair % 2 else ("after", "before")  # ABBA...
            for side in order:
                console.print(f"[bold]pair {pair} of {pairs}: {side}[/] ({sides[side]})")
                file = (output / f"{side}-{pair}.json").resolve()
                runs[side].append(run_bench(sides[side], file, bench_args or []))
    finally:
        drop_worktree(checkout)
    console.print(table(base_rev, medians(runs["before"]), medians(runs["after"])))
    console.print(f"each run's results: {output}/before-N.json, {output}/after-N.json")


if __name__ == "__main__":
    typer.run(main)
