"""``warren supervise``: run one command, and restart it alone when it crashes.

`make run` starts every process of the ``Procfile`` with honcho, and honcho stops *all* of them
as soon as *one* exits: SIGKILL the payment service and the whole system goes down. Under
compose the same kill restarts that one container (``restart: unless-stopped``). Each
long-running line of the ``Procfile`` reads ``warren supervise -- <command>`` to get the same
behaviour locally:

* the command dies (a non-zero exit, or killed by a signal): one line says so, and it starts
  again after 1 s, then 2 s, 4 s ... up to ``--max-backoff``, so a command that cannot start
  does not spin; after 60 s of healthy running the wait is back to 1 s;
* the command exits 0: it is done, and supervise exits 0 too;
* supervise gets SIGTERM or SIGINT (honcho sends SIGTERM to everything on Ctrl-C): it passes
  the signal on, gives the command ``--stop-timeout`` seconds to stop (then SIGKILL) and exits
  with its status, without restarting it. SIGHUP is passed on too.

The command inherits standard input, output and error, and stays in supervise's process group.
So a signal sent to the whole group (honcho's SIGTERM and, 5 s later, its SIGKILL; Ctrl-C in a
terminal) reaches it directly, and it is not left behind if supervise itself is SIGKILLed. It
then gets the signal twice, directly and passed on, which uvicorn and Celery take as one
SIGTERM (they are already stopping). A second SIGINT would make them stop *at once*, so in a
terminal stop ``warren supervise`` with ``kill``, or accept a hurried stop on Ctrl-C.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from types import FrameType

import typer

# Signals passed on to the command; the first two also mean "stop, do not restart".
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# `warren supervise python -m x --port 1` works without `--`: options end at the command.
CONTEXT_SETTINGS = {"allow_interspersed_args": False}


def log(message: str) -> None:
    print(f"supervise: {message}", file=sys.stderr, flush=True)


def describe(returncode: int) -> str:
    """``exit 1``, or ``signal 9`` for a command killed by a signal (Popen's negative codes)."""
    return f"signal {-returncode}" if returncode < 0 else f"exit {returncode}"


def exit_status(returncode: int) -> int:
    """The status a shell would report: 128 + n for a command killed by signal n."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """Runs ``command`` until it exits 0 or a stop signal comes, restarting it with back-off."""

    def __init__(
        self,
        command: list[str],
        *,
        initial_backoff: float,
        max_backoff: float,
        healthy_after: float,
        stop_timeout: float,
    ) -> None:
        self.command = command
        self.name = shlex.join(command)
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self.stop_timeout = stop_timeout
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_signal: signal.Signals | None = None
        self.killed = False

    def run(self) -> int:
        for sig in (*FORWARDED_SIGNALS, signal.SIGALRM):
            signal.signal(sig, self._on_signal)
        backoff = min(self.initial_backoff, self.max_backoff)
        restarts = 0
        while True:
            started = time.monotonic()
            try:
                self.child = subprocess.Popen(self.command)
            except OSError as exc:  # not found, not executable: restarting will not help
                log(f"cannot run {self.name}: {exc}")
                return 127
            log(f"started {self.name} (pid {self.child.pid})")
            if self.stop_signal is not None:  # it came while the command was starting
                self._send(self.stop_signal)
            returncode = self.child.wait()  # signal handlers run meanwhile: see _on_signal

            if self.stop_signal is not None:
                if self.killed:
                    log(f"{self.name} did not stop within {self.stop_timeout:g} s: SIGKILLed it")
                log(
                    f"{self.stop_signal.name} received; {self.name} stopped ({describe(returncode)})"
                )
                return exit_status(returncode)
            if returncode == 0:
                log(f"{self.name} exited 0; not restarting")
                return 0
            if time.monotonic() - started >= self.healthy_after:
                backoff = min(self.initial_backoff, self.max_backoff)
            restarts += 1
            log(
                f"{self.name} died ({describe(returncode)}); "
                f"restarting in {backoff:g} s (restart {restarts})"
            )
            if not self._sleep(backoff):
                log(f"{self.stop_signal.name} received; not restarting {self.name}")
                return exit_status(returncode)
            backoff = min(backoff * 2, self.max_backoff)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Pass SIGTERM/SIGINT/SIGHUP on to the command; SIGALRM: its time to stop is up.

        Python runs this in the main thread between two steps of ``run`` -- typically while it
        waits for the command -- which then carries on.
        """
        sig = signal.Signals(signum)
        if sig == signal.SIGALRM:
            self.killed = self._send(signal.SIGKILL)
            return
        if sig in STOP_SIGNALS and self.stop_signal is None:
            self.stop_signal = sig
            signal.setitimer(signal.ITIMER_REAL, self.stop_timeout)  # then SIGALRM
        self._send(sig)

    def _send(self, sig: signal.Signals) -> bool:
        """Signal the command if it is running; whether it was."""
        child = self.child
        if child is None or child.returncode is not None:
            return False
        child.send_signal(sig)
        return True

    def _sleep(self, seconds: float) -> bool:
        """Wait before a restart; False as soon as a stop signal came."""
        deadline = time.monotonic() + seconds
        while self.stop_signal is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.1))
        return False


def supervise(
    command: list[str] = typer.Argument(
        ..., metavar="COMMAND", help="The command to run and its arguments, after `--`."
    ),
    max_backoff: float = typer.Option(
        30.0, min=0.0, help="Longest wait before a restart, in seconds (it starts at 1 s)."
    ),
    stop_timeout: float = typer.Option(
        10.0,
        min=0.1,
        help="Seconds the command gets to stop after SIGTERM/SIGINT before SIGKILL.",
    ),
    # For the tests, which cannot wait for real back-offs.
    initial_backoff: float = typer.Option(1.0, min=0.0, hidden=True),
    healthy_after: float = typer.Option(60.0, min=0.0, hidden=True),
) -> None:
    """Run a command and restart it when it crashes (non-zero exit or killed by a signal),
    waiting 1 s, 2 s, 4 s ... between restarts; exit when it exits 0.

    SIGTERM, SIGINT and SIGHUP are passed on to the command; after SIGTERM or SIGINT it is not
    restarted, and supervise exits with its status. Example (a Procfile line):
    `warren supervise -- python -m services.order --port 8000`.
    """
    supervisor = Supervisor(
        command,
        initial_backoff=initial_backoff,
        max_backoff=max_backoff,
        healthy_after=healthy_after,
        stop_timeout=stop_timeout,
    )
    raise typer.Exit(supervisor.run())


# `python -m cli.supervise -- ...`: the same command, without loading the rest of the CLI.
if __name__ == "__main__":
    app = typer.Typer(add_completion=False)
    app.command(context_settings=CONTEXT_SETTINGS)(supervise)
    app()
