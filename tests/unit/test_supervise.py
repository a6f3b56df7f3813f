"""``warren supervise`` with real processes: tiny Python children, no broker.

Each child appends ``<pid> <start time>`` to a file when it starts, so a test sees every
(re)start. Supervise runs in its own session, which the fixture kills whole at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]

# argv[1]: file to append "<pid> <time>" to; argv[2]: what to do after.
CHILD = """
import os, signal, sys, time
from pathlib import Path
starts = Path(sys.argv[1])
with starts.open("a") as f:
    f.write(f"{os.getpid()} {time.time()}\\n")
mode = sys.argv[2]
if mode == "exit0":
    sys.exit(0)
if mode == "exit1":
    sys.exit(1)
if mode == "graceful":  # stop on SIGTERM, note a SIGHUP
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda *_: starts.with_suffix(".hup").write_text("hup"))
if mode == "stubborn":  # ignore SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "healthy-on-third":  # crash at once, except the third start, which runs a while
    if len(starts.read_text().splitlines()) != 3:
        sys.exit(1)
    time.sleep(1.2)
    sys.exit(1)
time.sleep(60)
"""


def wait_for(
    probe: Callable[[], T],
    *,
    until: Callable[[T], bool] = bool,
    timeout: float = 10.0,
    what: str = "the expected outcome",
) -> T:
    """Call ``probe`` until ``until(result)`` holds (the sync twin of support.polling.eventually)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last: {result!r}"
            )
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Run:
    """One ``supervise`` process and its child's record of starts."""

    def __init__(self, tmp_path: Path, mode: str, *options: str) -> None:
        self.starts_file = tmp_path / "starts.txt"
        self.hup_file = tmp_path / "starts.hup"
        self.log_file = tmp_path / "supervise.log"
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        # -I -S: the child needs nothing installed, and starts faster without it.
        command = [sys.executable, "-I", "-S", str(script), str(self.starts_file), mode]
        with self.log_file.open("w") as log:
            self.process = subprocess.Popen(  # `warren supervise`, without the rest of the CLI
                [sys.executable, "-m", "cli.supervise", *options, "--", *command],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def pids(self) -> list[int]:
        if not self.starts_file.exists():
            return []
        return [int(line.split()[0]) for line in self.starts_file.read_text().splitlines()]

    def start_times(self) -> list[float]:
        return [float(line.split()[1]) for line in self.starts_file.read_text().splitlines()]

    def log(self) -> str:
        return self.log_file.read_text()

    def wait_for_starts(self, count: int) -> list[int]:
        return wait_for(self.pids, until=lambda p: len(p) >= count, what=f"{count} starts")

    def exit_code(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout)

    def cleanup(self) -> None:
        # Supervise and anything it left behind share its session's process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(mode: str, *options: str) -> Run:
        run = Run(tmp_path, mode, "--initial-backoff", "0.1", *options)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.cleanup()


def test_a_child_killed_with_sigkill_is_restarted(supervise: Callable[..., Run]) -> None:
    run = supervise("sleep")
    [first] = run.wait_for_starts(1)

    os.kill(first, signal.SIGKILL)

    second = run.wait_for_starts(2)[1]
    assert second != first
    assert alive(second)
    assert not alive(first)
    assert run.process.poll() is None, "supervise keeps running"
    assert re.search(r"died \(signal 9\); restarting in 0\.1 s \(restart 1\)", run.log())


def test_a_child_that_exits_0_ends_supervise_with_0(supervise: Callable[..., Run]) -> None:
    run = supervise("exit0")

    assert run.exit_code() == 0
    assert len(run.pids()) == 1, "not restarted"


def test_warren_has_the_supervise_command() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["supervise", "--help"])
    assert result.exit_code == 0, result.output
    assert "--max-backoff" in result.output


def test_sigterm_is_passed_on_and_nothing_restarts(supervise: Callable[..., Run]) -> None:
    run = supervise("graceful")
    [child] = run.wait_for_starts(1)

    os.kill(run.process.pid, signal.SIGHUP)  # to supervise alone: it passes it on
    wait_for(run.hup_file.exists, what="the child to get the SIGHUP")
    os.kill(run.process.pid, signal.SIGTERM)

    assert run.exit_code() == 0, run.log()  # the child's own status: it stopped cleanly
    assert not alive(child)
    assert run.pids() == [child], "not restarted"
    assert "SIGTERM received" in run.log()


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    supervise: Callable[..., Run],
) -> None:
    run = supervise("stubborn", "--stop-timeout", "0.5")
    [child] = run.wait_for_starts(1)

    os.kill(run.process.pid, signal.SIGTERM)

    assert run.exit_code() == 128 + signal.SIGKILL
    assert not alive(child)
    assert "did not stop within 0.5 s" in run.log()


def restart_delays(log: str) -> list[float]:
    return [float(d) for d in re.findall(r"restarting in ([\d.]+) s", log)]


def test_the_back_off_doubles_up_to_the_maximum(supervise: Callable[..., Run]) -> None:
    run = supervise("exit1", "--max-backoff", "0.4")
    run.wait_for_starts(5)
    os.kill(run.process.pid, signal.SIGTERM)
    run.exit_code()

    assert restart_delays(run.log())[:4] == [0.1, 0.2, 0.4, 0.4]
    assert re.search(r"died \(exit 1\); restarting in 0\.2 s \(restart 2\)", run.log())
    times = run.start_times()
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= delay for gap, delay in zip(gaps, [0.1, 0.2, 0.4, 0.4], strict=False)), gaps


def test_the_back_off_starts_again_after_a_healthy_run(supervise: Callable[..., Run]) -> None:
    run = supervise("healthy-on-third", "--max-backoff", "5", "--healthy-after", "1")
    run.wait_for_starts(5)
    os.kill(run.process.pid, signal.SIGTERM)
    run.exit_code()

    # Starts 1 and 2 crash at once (0.1 s, 0.2 s); start 3 ran 1.2 s, so the wait is 0.1 s again.
    assert restart_delays(run.log())[:4] == [0.1, 0.2, 0.1, 0.2]
