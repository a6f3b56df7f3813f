"""Run the tutorial's commands against a live local system and check what each one prints.

The chapters' fenced ```bash blocks are what a reader types. A block marked for checking has an
HTML comment right before it (a blank line between the two), which the rendered page does not
show::

    <!-- check: expect is CONFIRMED after -->

    ```bash
    .venv/bin/warren demo
    ```

A marker holds one clause after ``check:``, or one clause per line::

    <!-- check:
    expect ^shop\\.events\\s+topic$
    reject False$
    capture ORDER_ID ^POST /orders -> 202, order ([0-9a-f-]{36})$
    retry 15
    -->

``expect REGEX``: a Python regex (``re.M``) that must match the output; ``reject REGEX``: one
that must not; ``capture NAME REGEX``: must match, and its group 1 replaces the word NAME in
the later blocks and their expectations; ``exit N``: the expected exit status (default 0,
``any``); ``retry SECONDS``: run the block again until it passes, for that long at most (for
read-only blocks whose answer settles a moment later); ``timeout SECONDS``: when the block
counts as hung (default 60).

and ``<!-- check: skip <reason> -->`` keeps a block out, with its reason in the report. Every
```bash block under a "Try it" heading must be marked one way or the other, except the compose
variants (a block with a ``docker ...`` or ``warren --compose`` command), which need Docker and
are only counted.

Blocks run in the order of the pages (chapters 01..12, then the reference pages), each with
``bash -e -o pipefail`` from the root of the tree the system runs in, stdout and stderr
together, with RABBIT_URL, no OTEL_* variable (a reader's second terminal has none) and
COLUMNS=160 (rich's tables do not wrap). ``rabbitmqctl`` gets ``-p <vhost>`` when RABBIT_URL
names a vhost other than ``/``, and blocks that use it are skipped where it cannot run (not
root).

Unless told ``--running``, the runner starts the system itself, as ``make run`` does (honcho and
the Procfile, with the same OTEL_* settings), in a scratch copy of the working tree (symlinks,
and a fresh ``.run``), so that a reader's own ``.run`` is left alone and every run starts from
empty databases and an empty mail sink. It first deletes Warren's queues on RABBIT_URL's vhost
(``warren topology reset``), as the end-to-end tests do, and refuses to start when a port of
the Procfile (8000 first) is taken, or when something consumes from those queues. It stops the
system at the end, by honcho's PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import typer

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"

# The Procfile's ports; the order API first, because it is what a running `make run` holds.
API_PORT = 8000
PORTS = (API_PORT, 8001, 8002, 8012, 8003, 8004, 27017, 1025, 8025, 4318)
HEALTH_PORTS = (8000, 8001, 8002, 8012, 8003, 8004)
# What `make run` adds to honcho's environment (the Makefile's `run` target).
MAKE_RUN_ENV = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
    "OTEL_BSP_SCHEDULE_DELAY": "500",
}
# The Celery worker has no health port: its start-up banner ends with this line.
WORKER_READY = re.compile(r"^\S+ emails\.1\s+\|.*\bready\.", re.M)
# Reference pages after the chapters; index.md holds set-up, not "Try it" steps.
REFERENCE_PAGES = ("mongodb-stand-in.md", "rabbitmq-versions.md")
COMPOSE_BLOCK = re.compile(r"(^|[;&|]\s*)docker\s|\bwarren --compose\b")

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


# --- reading the pages ----------------------------------------------------------------------


@dataclass
class Marker:
    expect: list[str] = field(default_factory=list)
    reject: list[str] = field(default_factory=list)
    capture: list[tuple[str, str]] = field(default_factory=list)
    exit: int | None = 0  # None: any status
    retry: float = 0.0
    timeout: float = 60.0
    skip: str | None = None


@dataclass
class Block:
    page: str
    line: int
    section: str
    code: str
    marker: Marker | None
    marker_error: str | None = None

    @property
    def label(self) -> str:
        stem = Path(self.page).stem
        return stem[:2] if stem[:2].isdigit() else stem

    @property
    def in_try_it(self) -> bool:
        return self.section.lower().startswith("try it")

    @property
    def commands(self) -> list[str]:
        return [
            ln for ln in self.code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
        ]

    @property
    def is_compose(self) -> bool:
        """A compose variant: a block with a command for Docker (or for compose, from the host)."""
        return any(COMPOSE_BLOCK.search(line) for line in self.commands)

    def headline(self, width: int = 72) -> str:
        # `. .venv/bin/activate` starts many blocks and says nothing about them.
        lines = [ln for ln in self.commands if not ln.startswith(". ")] or self.commands
        first = lines[0].strip() if lines else "(empty)"
        if len(first) > width:
            first = first[: width - 3] + "..."
        more = len(lines) - 1
        return first + (f"  (+{more} line{'s' if more > 1 else ''})" if more else "")


def parse_marker(body: str) -> Marker:
    """The clauses of one ``<!-- check ... -->`` comment (``body`` is what follows ``check``)."""
    marker = Marker()
    for raw in body.lstrip(":").splitlines():
        clause = raw.strip()
        if not clause:
            continue
        key, _, rest = clause.partition(" ")
        rest = rest.strip()
        if key == "expect":
            marker.expect.append(_regex(rest))
        elif key == "reject":
            marker.reject.append(_regex(rest))
        elif key == "capture":
            name, _, pattern = rest.partition(" ")
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name) or not pattern:
                raise ValueError(f"capture needs NAME REGEX, got {rest!r}")
            marker.capture.append((name, _regex(pattern.strip())))
        elif key == "exit":
            marker.exit = None if rest == "any" else int(rest)
        elif key == "retry":
            marker.retry = float(rest)
        elif key == "timeout":
            marker.timeout = float(rest)
        elif key == "skip":
            marker.skip = rest or "no reason given"
        else:
            raise ValueError(f"unknown clause {clause!r}")
    return marker


def _regex(pattern: str) -> str:
    re.compile(pattern)  # a typo in a marker fails the run, not silently matches nothing
    return pattern


def read_blocks(page: Path) -> Iterator[Block]:
    """Every ```bash block of ``page``, with the marker comment that precedes it, if any."""
    lines = page.read_text().splitlines()
    section, pending, pending_error = "", None, None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section, pending, pending_error = line[3:].strip(), None, None
        elif line.lstrip().startswith("<!--") and re.match(r"<!--\s*check\b", line.lstrip()):
            start = i
            text = line
            while "-->" not in text and i + 1 < len(lines):
                i += 1
                text += "\n" + lines[i]
            body = re.sub(r"^\s*<!--\s*check", "", text.split("-->")[0])
            try:
                pending, pending_error = parse_marker(body), None
            except ValueError as exc:
                pending, pending_error = None, f"line {start + 1}: {exc}"
        elif line.startswith("```"):
            fence_line = i
            language = line[3:].strip()
            code: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                code.append(lines[i])
                i += 1
            if language == "bash":
                yield Block(
                    page.name, fence_line + 1, section, "\n".join(code), pending, pending_error
                )
            pending, pending_error = None, None
        elif line.strip():
            pending, pending_error = None, None
        i += 1


def tutorial_pages(docs: Path) -> list[Path]:
    chapters = sorted(docs.glob("[0-9][0-9]-*.md"))
    return [*chapters, *(docs / name for name in REFERENCE_PAGES if (docs / name).exists())]


# --- running the system ---------------------------------------------------------------------


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def scratch_tree() -> Path:
    """A directory that looks like the repository (symlinks) with a fresh ``.run`` of its own."""
    tree = Path(tempfile.mkdtemp(prefix="warren-tutorial-"))
    for entry in REPO.iterdir():
        if entry.name not in {".run", ".git", "reports", "site"}:
            (tree / entry.name).symlink_to(entry)
    (tree / ".run").mkdir()
    return tree


def service_users(tree: Path, env: dict[str, str]) -> dict[str, str]:
    """What `make run` does before honcho: one broker user per service, and each service's
    RABBIT_URL_<SERVICE> (none where they cannot be provisioned: the services connect as the
    operator)."""
    provisioned = subprocess.run(
        [str(VENV_BIN / "warren"), "topology", "provision", "--env"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    exports = [line.removeprefix("export ") for line in provisioned.stdout.splitlines()]
    return dict(line.split("=", 1) for line in exports if "=" in line)


class System:
    """The Procfile under honcho, as `make run` starts it, in ``tree``."""

    def __init__(self, tree: Path, rabbit_url: str) -> None:
        self.tree = tree
        self.log_path = tree / ".run" / "run.log"
        self.env = {
            **os.environ,
            **MAKE_RUN_ENV,
            "RABBIT_URL": rabbit_url,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.honcho: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> float:
        started = time.perf_counter()
        self.env |= service_users(self.tree, self.env)  # after the queues were reset
        with self.log_path.open("wb") as log:
            self.honcho = subprocess.Popen(
                [str(VENV_BIN / "honcho"), "start"],
                cwd=self.tree,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # apart from this script's terminal and its Ctrl-C
            )
        while time.perf_counter() - started < timeout:
            if self.honcho.poll() is not None:
                raise RuntimeError(f"honcho exited ({self.honcho.returncode}):\n{self.tail()}")
            if (
                all(ready(port) for port in HEALTH_PORTS)
                and port_taken(8025)
                and port_taken(4318)
                and WORKER_READY.search(self.log_path.read_text(errors="replace"))
            ):
                return time.perf_counter() - started
            time.sleep(0.5)
        raise RuntimeError(f"the system was not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> list[int]:
        """SIGTERM to honcho (it stops every process, as on Ctrl-C); the ports still held after."""
        import psutil  # a dev requirement, like this script

        if self.honcho is None:
            return []
        if self.honcho.poll() is None:
            # Honcho gives each process a process group of its own: note them all by PID now,
            # in case honcho itself has to be killed.
            started = psutil.Process(self.honcho.pid).children(recursive=True)
            self.honcho.send_signal(signal.SIGTERM)
            try:
                self.honcho.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.honcho.kill()
                self.honcho.wait(timeout=10)
            for process in started:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        deadline = time.perf_counter() + 10
        while (held := [p for p in PORTS if port_taken(p)]) and time.perf_counter() < deadline:
            time.sleep(0.5)
        return held

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# --- running the blocks ---------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    seconds: float
    output: str = ""
    problems: list[str] = field(default_factory=list)


def replace_word(text: str, name: str, value: str) -> str:
    """``text`` with the word ``name`` replaced by ``value``, taken literally."""
    return re.sub(rf"\b{name}\b", lambda _match: value, text)


def with_values(pattern: str, variables: dict[str, str]) -> str:
    for name, value in variables.items():
        pattern = replace_word(pattern, name, re.escape(value))
    return pattern


def prepare(code: str, variables: dict[str, str], vhost: str) -> str:
    for name, value in variables.items():
        code = replace_word(code, name, value)
    if vhost != "/":
        code = re.sub(r"\brabbitmqctl (\w+)", rf"rabbitmqctl \1 -p {vhost}", code)
    return code


def run_block(
    block: Block,
    marker: Marker,
    cwd: Path,
    env: dict[str, str],
    variables: dict[str, str],
    vhost: str,
) -> Outcome:
    code = prepare(block.code, variables, vhost)
    # A captured value may be part of what to expect, too (`expect ^trace TRACE_ID`).
    expected = Marker(
        expect=[with_values(pattern, variables) for pattern in marker.expect],
        reject=[with_values(pattern, variables) for pattern in marker.reject],
        capture=marker.capture,
        exit=marker.exit,
        timeout=marker.timeout,
    )
    started = time.perf_counter()
    while True:
        output, status = run_bash(code, cwd, env, marker.timeout)
        problems = check(expected, output, status)
        if not problems or time.perf_counter() - started >= marker.retry:
            break
        time.sleep(1)
    if not problems:
        for name, pattern in marker.capture:
            match = re.search(pattern, output, re.M)
            assert match is not None  # check() asked for it
            variables[name] = match.group(1)
    return Outcome(not problems, time.perf_counter() - started, output, problems)


def run_bash(code: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[str, int | None]:
    """The block's output and exit status (None: it hung, and everything it started is killed)."""
    process = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        return output.decode(errors="replace"), process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return output.decode(errors="replace"), None


def check(marker: Marker, output: str, status: int | None) -> list[str]:
    problems = []
    if status is None:
        problems.append(f"timed out after {marker.timeout:g} s")
    elif marker.exit is not None and status != marker.exit:
        problems.append(f"exit status {status}, expected {marker.exit}")
    for pattern in marker.expect:
        if not re.search(pattern, output, re.M):
            problems.append(f"no line matches  {pattern}")
    for pattern in marker.reject:
        if re.search(pattern, output, re.M):
            problems.append(f"a line matches   {pattern}  (it must not)")
    for name, pattern in marker.capture:
        if not re.search(pattern, output, re.M):
            problems.append(f"nothing to capture as {name}:  {pattern}")
    return problems


def live_consumers(rabbit_url: str) -> dict[str, int]:
    """Warren's queues on the vhost that something consumes from, with how many consumers."""
    import asyncio

    from shared.topology import queues_in_use

    return asyncio.run(queues_in_use(rabbit_url))


def vhost_of(rabbit_url: str) -> str:
    path = urlparse(rabbit_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def rabbitmqctl_usable() -> bool:
    return shutil.which("rabbitmqctl") is not None and os.geteuid() == 0


# --- the command ------------------------------------------------------------------------------


@dataclass
class Plan:
    """The blocks, sorted by what the run does with them."""

    to_run: list[tuple[Block, Marker]] = field(default_factory=list)
    skipped: list[tuple[Block, str]] = field(default_factory=list)  # with the reason
    compose: dict[str, int] = field(default_factory=dict)  # compose variants, per page label
    unmarked: list[Block] = field(default_factory=list)  # "Try it" blocks without a marker
    broken: list[tuple[Block, str]] = field(default_factory=list)  # with the marker's error


@dataclass
class Tally:
    """The outcomes so far; a broken marker and a missing one count as failures from the start."""

    passed: int = 0
    failed: int = 0


@app.command()
def main(
    rabbit_url: str = typer.Option(
        "amqp://guest:guest@127.0.0.1:5672/",
        envvar="RABBIT_URL",
        help="The broker (and vhost) the system and the commands use.",
    ),
    running: bool = typer.Option(
        False,
        "--running",
        help="The system is already up (make run): run the commands against it, from the "
        "repository root, and start nothing. Chapter 2 greps make run's log in .run/run.log: "
        "start it as chapter 2 says (make run 2>&1 | tee -i .run/run.log).",
    ),
    docs: Path = typer.Option(REPO / "docs", help="Where the pages are."),
    only: list[str] = typer.Option(
        [], help="Run only these pages (01, 08, mongodb-stand-in...); repeatable."
    ),
    keep: bool = typer.Option(False, help="Keep the scratch tree (its .run has the run's log)."),
    list_only: bool = typer.Option(
        False, "--list", help="List the blocks and their markers; run nothing."
    ),
) -> None:
    """Run the tutorial's marked ```bash blocks in order against a live local system and check
    the key line of each output. Exit status: 0 all passed, 1 a check failed, 2 not started."""
    plan = plan_blocks(select_blocks(docs, only), can_ctl=rabbitmqctl_usable())
    if list_only:
        list_plan(plan)
        return
    report_bad_markers(plan)
    vhost = vhost_of(rabbit_url)
    not_run = len(plan.skipped) + sum(plan.compose.values())
    typer.echo(
        f"tutorial check: {len(plan.to_run)} blocks to run, {not_run} not run, "
        f"against {masked(rabbit_url)} (vhost {vhost})"
    )
    started = time.perf_counter()
    system = None if running else prepare_system(rabbit_url, vhost)
    # Counted as the blocks run: when the run is cut short, stopping the system still knows
    # whether to show the end of its log.
    tally = Tally(failed=len(plan.broken) + len(plan.unmarked))
    try:
        if system is not None:
            start_system(system)
        tree = REPO if system is None else system.tree
        run_blocks(plan.to_run, tree, rabbit_url, vhost, tally)
    finally:
        if system is not None:
            stop_system(system, failed=tally.failed > 0, keep=keep)

    report_skipped(plan.skipped, plan.compose)
    typer.echo(
        f"result: {tally.passed} passed, {tally.failed} failed, {len(plan.skipped)} skipped, "
        f"{sum(plan.compose.values())} compose blocks not run, "
        f"in {time.perf_counter() - started:.1f} s"
    )
    raise typer.Exit(1 if tally.failed else 0)


def select_blocks(docs: Path, only: list[str]) -> list[Block]:
    """Every ```bash block of the pages, in their order; with ``only``, those of these pages."""
    blocks = [b for page in tutorial_pages(docs) for b in read_blocks(page)]
    if only:
        blocks = [
            b for b in blocks if any(b.label.startswith(o) or b.page.startswith(o) for o in only)
        ]
    return blocks


def plan_blocks(blocks: list[Block], can_ctl: bool) -> Plan:
    """Sort the blocks: a compose variant is only counted, and a block that needs rabbitmqctl
    is skipped where it cannot run."""
    plan = Plan()
    for block in blocks:
        if block.marker_error:
            plan.broken.append((block, block.marker_error))
        elif block.marker is None:
            if block.is_compose:
                plan.compose[block.label] = plan.compose.get(block.label, 0) + 1
            elif block.in_try_it:
                plan.unmarked.append(block)
        elif block.marker.skip:
            plan.skipped.append((block, block.marker.skip))
        elif "rabbitmqctl" in block.code and not can_ctl:
            plan.skipped.append((block, "rabbitmqctl is not usable here (it needs root)"))
        else:
            plan.to_run.append((block, block.marker))
    return plan


def list_plan(plan: Plan) -> None:
    """``--list``: the blocks to run with what they expect, the unmarked ones, and the rest."""
    for block, marker in plan.to_run:
        typer.echo(f"[{block.label}] check  {block.page}:{block.line}  {block.headline()}")
        for pattern in marker.expect:
            typer.echo(f"           expect {pattern}")
    for block in plan.unmarked:
        typer.echo(f"[{block.label}] UNMARKED  {block.page}:{block.line}  {block.headline()}")
    report_skipped(plan.skipped, plan.compose)


def report_bad_markers(plan: Plan) -> None:
    """The blocks that fail before anything runs: a marker that does not parse, and a "Try it"
    block without one."""
    for block, error in plan.broken:
        typer.echo(f"[{block.label}] FAIL  {block.page}:{block.line}  bad marker: {error}")
    for block in plan.unmarked:
        typer.echo(
            f"[{block.label}] FAIL  {block.page}:{block.line}  a Try it block with no marker "
            "(add <!-- check: ... --> or <!-- check: skip <reason> -->):  " + block.headline()
        )


def masked(rabbit_url: str) -> str:
    """The URL with its password hidden, for the report."""
    return re.sub(r"//([^:@/]+):[^@/]*@", r"//\1:***@", rabbit_url)


def prepare_system(rabbit_url: str, vhost: str) -> System:
    """The system to start, in a scratch tree, with Warren's queues on the vhost deleted first;
    exit 2 when another system is in the way."""
    refuse_to_disturb(rabbit_url, vhost)
    tree = scratch_tree()
    system = System(tree, rabbit_url)
    reset_queues(tree, rabbit_url, vhost)
    typer.echo(f"system: honcho start in {tree} (log: {system.log_path}) ...")
    return system


def refuse_to_disturb(rabbit_url: str, vhost: str) -> None:
    """Exit 2 when a port of the Procfile is taken or something consumes from Warren's queues on
    the vhost: the run would collide with a live system, or delete the queues under it."""
    taken = [p for p in PORTS if port_taken(p)]
    if taken:
        typer.echo(
            f"refusing to start the system: port{'s' if len(taken) > 1 else ''} "
            f"{', '.join(map(str, taken))} {'are' if len(taken) > 1 else 'is'} taken"
            + (" (is make run up? then use --running)" if API_PORT in taken else "")
        )
        raise typer.Exit(2)
    in_use = live_consumers(rabbit_url)
    if in_use:
        typer.echo(
            f"refusing to delete Warren's queues on vhost {vhost}: a live system consumes "
            f"from them ({', '.join(f'{q}: {n}' for q, n in in_use.items())}); stop it, "
            "give the check a vhost of its own (RABBIT_URL), or use --running"
        )
        raise typer.Exit(2)


def reset_queues(tree: Path, rabbit_url: str, vhost: str) -> None:
    """``warren topology reset --yes``, so that the run starts from empty queues (exit 2 if it
    fails)."""
    reset = subprocess.run(
        [str(VENV_BIN / "warren"), "topology", "reset", "--yes"],
        cwd=tree,
        env={**os.environ, "RABBIT_URL": rabbit_url},
        capture_output=True,
        text=True,
    )
    if reset.returncode != 0:
        typer.echo(
            f"cannot reset Warren's queues on {masked(rabbit_url)}:\n{reset.stdout}{reset.stderr}"
        )
        raise typer.Exit(2)
    typer.echo(f"broker: {reset.stdout.strip()} (Warren's, on vhost {vhost})")


def start_system(system: System) -> None:
    """Start the system and wait until every process is ready; exit 2 when it is not."""
    try:
        took = system.start()
    except RuntimeError as exc:
        typer.echo(f"system: FAILED to start: {exc}")
        raise typer.Exit(2) from None
    typer.echo(f"system: ready in {took:.1f} s")


def run_blocks(
    to_run: list[tuple[Block, Marker]], tree: Path, rabbit_url: str, vhost: str, tally: Tally
) -> None:
    """Run the blocks in order, in the environment of a reader's second terminal, and count
    each outcome in ``tally``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {"RABBIT_URL": rabbit_url, "COLUMNS": "160"}
    variables: dict[str, str] = {}  # the captured values, for the blocks after
    for block, marker in to_run:
        outcome = run_block(block, marker, tree, env, variables, vhost)
        if outcome.ok:
            tally.passed += 1
        else:
            tally.failed += 1
        report_outcome(block, outcome)


def report_outcome(block: Block, outcome: Outcome) -> None:
    """One line per block; for a failure, where the block is, what went wrong and the end of its
    output."""
    verdict = "ok  " if outcome.ok else "FAIL"
    typer.echo(f"[{block.label}] {verdict} {outcome.seconds:5.1f} s  {block.headline()}")
    if outcome.ok:
        return
    typer.echo(f"       {block.page}:{block.line}")
    for problem in outcome.problems:
        typer.echo(f"       {problem}")
    typer.echo("       output (last 25 lines):")
    for line in outcome.output.splitlines()[-25:]:
        typer.echo(f"       | {line}")


def stop_system(system: System, *, failed: bool, keep: bool) -> None:
    """Stop the system and say whether its ports are free; show the end of its log when a check
    failed, and remove the scratch tree unless told to keep it."""
    held = system.stop()
    typer.echo(
        "system: stopped"
        + (f"; ports still held: {held}" if held else "; every port is free again")
    )
    if failed and system.log_path.exists():
        typer.echo("system: the last lines of its log:\n" + system.tail(20))
    if keep:
        typer.echo(f"scratch tree kept: {system.tree}")
    else:
        shutil.rmtree(system.tree, ignore_errors=True)


def report_skipped(skipped: list[tuple[Block, str]], compose: dict[str, int]) -> None:
    if skipped:
        typer.echo("not run:")
    for block, reason in skipped:
        typer.echo(f"[{block.label}] skip  {block.headline(56)}  -- {reason}")
    for label, count in compose.items():
        typer.echo(
            f"[{label}] skip  {count} compose block{'s' if count > 1 else ''}  -- needs Docker"
        )


if __name__ == "__main__":
    app()
