"""How much memory a running Warren uses: resident memory per process of `make run`, and the sum.

`make run` starts everything under honcho; this finds the honcho process started from this
folder, walks its process tree, and prints each process's resident set size (RSS), grouped by
the Procfile line it belongs to. Run it after a load run (`make load`) to see the system at work:
the README's "Memory" numbers come from here, and compose's memory limits are set from them.

    python -m loadtests.memory            # make memory
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import psutil
import typer
from rich.console import Console
from rich.table import Table

console = Console()
MIB = 1024 * 1024


def find_honcho(folder: Path) -> psutil.Process | None:
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline, cwd = process.info["cmdline"] or [], process.info["cwd"]
        is_honcho = any(Path(arg).name == "honcho" for arg in cmdline[:2]) and "start" in cmdline
        if is_honcho and cwd and Path(cwd) == folder:
            return process
    return None


def is_plumbing(process: psutil.Process) -> bool:
    """honcho's helper, the shell of a Procfile line, or the supervisor."""
    cmdline = process.cmdline()
    if not cmdline:
        return True
    return (
        Path(cmdline[0]).name in ("sh", "bash")
        or "cli.supervise" in cmdline
        or any("honcho" in arg for arg in cmdline[:2])
    )


def label(processes: list[psutil.Process]) -> str:
    """A Procfile line's name: what its first process that is not plumbing (honcho's helper,
    the shell, the supervisor) runs: a module for `python -m`, else the command."""
    for process in processes:
        if is_plumbing(process):
            continue
        cmdline = process.cmdline()
        if "-m" in cmdline:
            return cmdline[cmdline.index("-m") + 1]
        if Path(cmdline[0]).name.startswith("python"):  # a script: `python3 .venv/bin/warren`
            cmdline = cmdline[1:]
        return " ".join([Path(cmdline[0]).name, *cmdline[1:2]])
    return processes[0].name()


def main(
    folder: Path = typer.Option(Path.cwd(), help="The folder `make run` was started in."),
) -> None:
    """Print the resident memory of every process of a running `make run`, and the sum."""
    honcho = find_honcho(folder.resolve())
    if honcho is None:
        console.print(f"[red]no `make run` (honcho) running in {folder.resolve()}[/]")
        raise typer.Exit(1)
    groups: dict[str, list[psutil.Process]] = defaultdict(list)
    for child in honcho.children():  # one shell per Procfile line
        processes = [child, *child.children(recursive=True)]
        groups[label(processes)].extend(processes)
    table = Table("process", "processes", "RSS (MiB)", "+ plumbing (MiB)")
    total = plumbing_total = 0
    for name, processes in sorted(groups.items()):
        own = [p for p in processes if not is_plumbing(p)]
        rss = sum(p.memory_info().rss for p in own if p.is_running())
        extra = sum(p.memory_info().rss for p in processes if p not in own and p.is_running())
        total, plumbing_total = total + rss, plumbing_total + extra
        table.add_row(name, str(len(own)), f"{rss / MIB:.0f}", f"{extra / MIB:.0f}")
    own_count = sum(1 for ps in groups.values() for p in ps if not is_plumbing(p))
    table.add_row(
        "[bold]all[/]", str(own_count), f"[bold]{total / MIB:.0f}[/]", f"{plumbing_total / MIB:.0f}"
    )
    console.print(table)
    console.print(
        "RSS: the services themselves (what a container holds). Plumbing: honcho's helper, the "
        "shell and `warren supervise` of each line, which only the local run has."
    )


if __name__ == "__main__":
    typer.run(main)
