"""`make run`'s replicas: the Procfile with as many lines of each scaled service as asked, and
the scrape targets of every replica, for Prometheus and ``warren top``.

``make run ORDER_REPLICAS=2 PAYMENT_REPLICAS=4`` runs ``python -m cli.replicas --order 2
--payment 4`` before honcho. It reads the ``Procfile``, replaces the lines of each scaled
process with one line per replica -- each HTTP service on its own port, the first replica's
port plus 10 for each replica after it (order 8000, 8010 ...; inventory 8001, 8011 ...;
payment 8002, 8012 ...; notification 8003, 8013 ...) -- and writes ``.run/Procfile``, which
honcho then starts. With the defaults (payment 2, the others 1) that file holds exactly the
Procfile's lines.

honcho's own ``-c payment_1=3`` would not do: it starts the *same* command three times, and the
three would fight over ``--port 8002``. honcho's ``$PORT`` (5000 + 100 x the line's place in the
Procfile + the replica) would move every port away from the 8000-8004 that the docs, the tests
and Prometheus know.

What makes each one safe to run twice (docs/18-scaling.md): order's outbox relay publishes only
the events its own replica saved, and adopts those of a replica that died (a lease); its saga
deadline sweep appends with the order's version, so two replicas cancelling one order cannot
both succeed. Inventory's claims and payment's idempotency keys make two deliveries of one
order harmless. Notification's sweepers may both re-enqueue one stuck email; the email task's
claim sends it once. The email workers (``emails``) are Celery's competing consumers. Several
order replicas need a load balancer in front of the API: ``make cluster`` starts HAProxy on
8088 for them.

Each HTTP service's targets go to ``.run/scrape/warren-<service>.json``, a ``file_sd`` file
that ``infra/prometheus/prometheus.local.yml`` reads (Prometheus re-reads it when it changes),
and that ``warren top`` reads to find every replica.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

PORT_STEP = 10  # the replicas of a service: its port, +10, +20 ... (payment: 8002, 8012 ...)
MAX_REPLICAS = 8  # so every replica stays under 8080, clear of the load balancer's 8088
SCRAPE_DIR = Path(".run/scrape")
# Steps the Procfile runs before a service, that one replica does for all: the catalog.
ONCE = "warren seed && "
SERVICE_PORT = re.compile(r"python -m services\.(\w+) --port (\d+)")


@dataclass(frozen=True)
class Line:
    name: str
    command: str

    @property
    def process(self) -> str:
        """What make run scales it by: its name without the replica number (``payment``)."""
        return re.sub(r"_\d+$", "", self.name)

    @property
    def service(self) -> str | None:
        found = SERVICE_PORT.search(self.command)
        return found.group(1) if found else None

    @property
    def port(self) -> int | None:
        found = SERVICE_PORT.search(self.command)
        return int(found.group(2)) if found else None


# The processes make run may scale, and how many replicas it runs of each without being asked.
DEFAULT_REPLICAS = {"order": 1, "inventory": 1, "payment": 2, "notification": 1, "emails": 1}
# Those with an HTTP port (health, /metrics): Prometheus and warren top find their replicas.
SCRAPED = ("order", "inventory", "payment", "notification")


Entry = Line | str  # a process line, or a comment or blank line kept as it is


def parse(text: str) -> list[Entry]:
    """The Procfile's lines: its process lines parsed, the others as they are."""
    entries: list[Entry] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            entries.append(raw)
            continue
        name, _, command = raw.partition(":")
        entries.append(Line(name.strip(), command.strip()))
    return entries


def _count(process: str, help: str) -> Any:
    return typer.Option(DEFAULT_REPLICAS[process], min=1, max=MAX_REPLICAS, help=help)


# --8<-- [start:replica-lines]
def replica_lines(first: Line, count: int) -> list[Line]:
    """``count`` copies of a process's first line, each named and on a port of its own.

    Names: ``payment_1``, ``payment_2`` ... for a line named ``payment_1``; ``inventory``,
    ``inventory_2`` ... for one named ``inventory``. One-time steps stay with the first."""
    if not 1 <= count <= MAX_REPLICAS:
        raise ValueError(f"{first.process}: 1 to {MAX_REPLICAS} replicas, not {count}")
    stem, numbered = (first.name[:-2], True) if first.name.endswith("_1") else (first.name, False)
    port = first.port
    lines = []
    for i in range(1, count + 1):
        name = f"{stem}_{i}" if numbered or i > 1 else stem
        command = first.command if i == 1 else first.command.removeprefix(ONCE)
        if port is not None:
            command = command.replace(f"--port {port}", f"--port {port + PORT_STEP * (i - 1)}")
        lines.append(Line(name, command))
    return lines
    # --8<-- [end:replica-lines]


def scale(entries: list[Entry], replicas: dict[str, int]) -> list[Entry]:
    """The Procfile's lines with each process of ``replicas`` at that many lines, where its
    first line was; every other line as it is."""
    unknown = set(replicas) - set(DEFAULT_REPLICAS)
    if unknown:
        raise ValueError(f"make run does not scale {', '.join(sorted(unknown))}")
    scaled: list[Entry] = []
    done: set[str] = set()
    for entry in entries:
        process = entry.process if isinstance(entry, Line) else None
        if process not in replicas:
            scaled.append(entry)
        elif process not in done:
            assert isinstance(entry, Line)
            scaled.extend(replica_lines(entry, replicas[process]))
            done.add(process)
    return scaled


def render(entries: list[Entry]) -> str:
    """A Procfile again: ``name: command`` lines, the comments where they were."""
    return "".join(
        f"{entry.name}: {entry.command}\n" if isinstance(entry, Line) else f"{entry}\n"
        for entry in entries
    )


def processes(entries: list[Entry]) -> list[Line]:
    return [entry for entry in entries if isinstance(entry, Line)]


def targets(lines: list[Line]) -> dict[str, list[str]]:
    """Each service's ``host:port`` targets, by service, in the Procfile's order."""
    found: dict[str, list[str]] = {}
    for line in lines:
        if line.service is not None:
            found.setdefault(line.service, []).append(f"127.0.0.1:{line.port}")
    return found


def write_file_sd(path: Path, targets: list[str]) -> Path:
    """A ``file_sd`` file of one group, written whole: Prometheus must never read half a file.
    No labels: the job names the service, and a target label would rename the services' own
    `service` label on every series (exported_service)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps([{"targets": targets, "labels": {}}], indent=2) + "\n")
    partial.replace(path)
    return path


def read_file_sd(path: Path) -> list[str] | None:
    """The targets of a ``file_sd`` file (None without one, or with a half-written one)."""
    try:
        groups = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return [target for group in groups for target in group.get("targets", [])]


def write_targets(found: dict[str, list[str]], folder: Path) -> list[Path]:
    """One ``file_sd`` file per scaled service (``warren-<service>.json``)."""
    return [
        write_file_sd(folder / f"warren-{service}.json", found.get(service, []))
        for service in SCRAPED
    ]


def write_broker_targets(targets: list[str], folder: Path) -> Path:
    """The broker's metrics endpoints (``rabbitmq.json``): the machine's RabbitMQ, or each node
    of ``make cluster``'s (RABBITMQ_METRICS_TARGETS). Each queue's series come from the node
    that leads it, so Prometheus and ``warren top`` add the nodes up."""
    return write_file_sd(folder / "rabbitmq.json", targets)


def read_broker_targets(folder: Path = SCRAPE_DIR) -> list[str]:
    """What :func:`write_broker_targets` wrote (``[]`` without a file)."""
    return read_file_sd(folder / "rabbitmq.json") or []


def read_targets(folder: Path = SCRAPE_DIR) -> dict[str, list[str]]:
    """What :func:`write_targets` wrote (``{}`` without a file): ``warren top``'s replicas."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob("warren-*.json")):
        targets = read_file_sd(path)
        if targets is not None:
            found[path.stem.removeprefix("warren-")] = targets
    return found


def main(
    order: int = _count("order", "Order replicas (the API: put a load balancer in front)."),
    inventory: int = _count("inventory", "Inventory replicas."),
    payment: int = _count("payment", "Payment replicas."),
    notification: int = _count("notification", "Notification replicas."),
    emails: int = _count("emails", "Celery email workers."),
    procfile: Path = typer.Option(Path("Procfile"), help="The Procfile to read."),
    output: Path = typer.Option(Path(".run/Procfile"), help="The Procfile to write."),
    scrape_dir: Path = typer.Option(SCRAPE_DIR, help="Where the scrape targets go."),
    targets_only: bool = typer.Option(
        False, "--targets-only", help="Write the scrape targets alone (no Procfile)."
    ),
    broker_metrics: str = typer.Option(
        "127.0.0.1:15692",
        envvar="RABBITMQ_METRICS_TARGETS",
        help="The broker's metrics endpoints, host:port,... (make cluster: its three nodes).",
    ),
) -> None:
    """Write make run's Procfile with ORDER_REPLICAS, INVENTORY_REPLICAS, PAYMENT_REPLICAS,
    NOTIFICATION_REPLICAS and EMAILS_REPLICAS lines, and the scrape targets of every replica
    (Prometheus' file_sd, warren top)."""
    counts = {
        "order": order,
        "inventory": inventory,
        "payment": payment,
        "notification": notification,
        "emails": emails,
    }
    scaled = scale(parse(procfile.read_text()), counts)
    if not targets_only:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(render(scaled))
    found = targets(processes(scaled))
    write_targets(found, scrape_dir)
    write_broker_targets([target for target in broker_metrics.split(",") if target], scrape_dir)
    ports = ", ".join(
        f"{service} {' '.join(':' + t.rsplit(':', 1)[1] for t in found[service])}"
        for service in SCRAPED
    )
    typer.echo(f"  Replicas (health)  {ports}; email workers {emails}")


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
