"""``warren top``: the whole shop at a glance, live, in the terminal.

Per queue: messages ready and unacknowledged, consumers, dead letters, and how many messages a
second its consumers finish (handled, retried); then the sagas -- orders finished a second,
their latency -- and the outbox. Refreshed every second; ``--once`` reads twice, ``--interval``
apart, prints one screen and exits (for scripts).

It reads what Prometheus reads: the broker's metrics endpoint (RabbitMQ's Prometheus plugin,
``/metrics/detailed``) and each service's ``/metrics``. Rates and latencies are over the last
interval: the difference between two reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cli.replicas import read_broker_targets, read_targets
from shared import topology

console = Console()

# Where the local run serves them (the Procfile's ports), with every replica make run started
# (PAYMENT_REPLICAS=4: the scrape targets it wrote, .run/scrape). WARREN_TOP_TARGETS overrides,
# as `name=url,...` (compose: order=http://order:8000,...).
LOCAL_TARGETS = {
    "order": "http://127.0.0.1:8000",
    "inventory": "http://127.0.0.1:8001",
    "payment": "http://127.0.0.1:8002",
    "payment-2": "http://127.0.0.1:8012",
    "notification": "http://127.0.0.1:8003",
    "audit": "http://127.0.0.1:8004",
}
# The broker's metrics endpoint; under `make cluster`, one per node (the targets make run wrote
# for Prometheus, .run/scrape/rabbitmq.json), added up: each queue is reported by its leader.
BROKER_METRICS = "http://127.0.0.1:15692"
QUEUE_FAMILIES = "family=queue_coarse_metrics&family=queue_consumer_count"

Sample = tuple[str, dict[str, str], float]


@dataclass
class Reading:
    """One read of every endpoint: the samples by metric name, and when."""

    at: float
    samples: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))
    unreachable: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for name, labels, value, *_ in family.samples:
                self.samples[name].append((name, labels, value))

    def total(self, name: str, **match: str) -> float:
        return sum(v for _, labels, v in self.samples.get(name, []) if _matches(labels, match))

    def highest(self, name: str, **match: str) -> float:
        """The largest of a gauge that every replica reads from the same database."""
        found = [v for _, labels, v in self.samples.get(name, []) if _matches(labels, match)]
        return max(found, default=0.0)

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        found: dict[str, float] = defaultdict(float)
        for _, labels, value in self.samples.get(name, []):
            if label in labels and _matches(labels, match):
                found[labels[label]] += value
        return found


def _matches(labels: dict[str, str], match: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match.items())


def targets() -> dict[str, str]:
    configured = os.environ.get("WARREN_TOP_TARGETS", "")
    if not configured:
        return local_targets(read_targets())
    return dict(item.split("=", 1) for item in configured.split(",") if "=" in item)


def local_targets(replicas: dict[str, list[str]]) -> dict[str, str]:
    """LOCAL_TARGETS with each service of ``replicas`` (``host:port``s, by service) at that
    many replicas: ``payment``, ``payment-2``, ``payment-3`` ..."""
    found: dict[str, str] = {}
    for name, url in LOCAL_TARGETS.items():
        service = name.split("-")[0]
        if service not in replicas:
            found[name] = url
        elif service not in found:
            for i, address in enumerate(replicas[service], start=1):
                found[service if i == 1 else f"{service}-{i}"] = f"http://{address}"
    return found


def broker_endpoints(option: str | None) -> list[str]:
    """``--broker`` (comma-separated), else the targets make run wrote, else the machine's."""
    if option:
        return [url for url in option.split(",") if url]
    return [f"http://{target}" for target in read_broker_targets()] or [BROKER_METRICS]


async def read(brokers: list[str], services: dict[str, str], vhost: str) -> Reading:
    reading = Reading(at=time.monotonic())
    urls = {
        **{
            ("broker" if i == 1 else f"broker-{i}"): f"{broker}/metrics/detailed?{QUEUE_FAMILIES}"
            for i, broker in enumerate(brokers, start=1)
        },
        **{name: f"{url}/metrics" for name, url in services.items()},
    }
    async with httpx.AsyncClient(timeout=2.0) as client:
        answers = await asyncio.gather(
            *(client.get(url) for url in urls.values()), return_exceptions=True
        )
    for name, answer in zip(urls, answers, strict=True):
        if isinstance(answer, BaseException) or answer.status_code != 200:
            reading.unreachable.append(name)
        else:
            reading.add(answer.text)
    # The broker's per-queue series, for this vhost only.
    for metric in list(reading.samples):
        if metric.startswith("rabbitmq_detailed_queue"):
            reading.samples[metric] = [
                s for s in reading.samples[metric] if s[1].get("vhost") == vhost
            ]
    return reading


def _rate(now: Reading, before: Reading | None, name: str, **match: str) -> float | None:
    if before is None or now.at <= before.at:
        return None
    return max(0.0, now.total(name, **match) - before.total(name, **match)) / (now.at - before.at)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def queue_table(now: Reading, before: Reading | None) -> Table:
    table = Table(title="queues", title_justify="left", expand=False)
    table.add_column("queue", no_wrap=True, min_width=26)
    for column in ("ready", "unacked", "consumers", "dlq", "handled/s", "retried/s"):
        table.add_column(column, justify="right")
    ready = now.by("rabbitmq_detailed_queue_messages_ready", "queue")
    unacked = now.by("rabbitmq_detailed_queue_messages_unacked", "queue")
    consumers = now.by("rabbitmq_detailed_queue_consumers", "queue")
    for queue in topology.ALL_QUEUES_WITH_DLQ:
        name = queue.name
        dead = ready.get(queue.dlq_name, 0) + unacked.get(queue.dlq_name, 0)
        table.add_row(
            name,
            f"{ready.get(name, 0):.0f}",
            f"{unacked.get(name, 0):.0f}",
            f"{consumers.get(name, 0):.0f}" if name in consumers else "-",
            f"[red]{dead:.0f}[/]" if dead else "0",
            _fmt(_rate(now, before, "warren_messages_total", queue=name, outcome="handled")),
            _fmt(_rate(now, before, "warren_messages_total", queue=name, outcome="retried")),
        )
    return table


def _quantile(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram (upper bound of the bucket it falls in)."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return None


def saga_table(now: Reading, before: Reading | None) -> Table:
    table = Table(title="orders", title_justify="left")
    for column in ("finished", "per second", "p50 ≤ s", "p99 ≤ s"):
        table.add_column(column, justify="right")
    buckets: dict[float, float] = defaultdict(float)
    earlier: dict[float, float] = defaultdict(float)
    for samples, into in ((now.samples, buckets), (before.samples if before else {}, earlier)):
        for _, labels, value in samples.get("warren_saga_duration_seconds_bucket", []):
            into[float(labels["le"])] += value
    window = {bound: buckets[bound] - earlier.get(bound, 0.0) for bound in buckets}
    finished = now.by("warren_orders_finished_total", "state")
    table.add_row(
        ", ".join(f"{state} {count:.0f}" for state, count in sorted(finished.items())) or "0",
        _fmt(_rate(now, before, "warren_orders_finished_total"), 2),
        _fmt(_quantile(window if before else buckets, 0.5), 2),
        _fmt(_quantile(window if before else buckets, 0.99), 2),
    )
    return table


def outbox_line(now: Reading) -> str:
    # Every order replica reads the same outbox: the largest reading, not their sum.
    pending = now.highest("warren_outbox_pending")
    oldest = now.highest("warren_outbox_oldest_pending_age_seconds")
    parked = now.highest("warren_outbox_parked")
    return f"outbox: {pending:.0f} pending (oldest {oldest:.1f} s), {parked:.0f} parked"


def screen(now: Reading, before: Reading | None) -> Group:
    parts: list[object] = [queue_table(now, before), saga_table(now, before), outbox_line(now)]
    if now.unreachable:
        parts.append(f"[yellow]not answering: {', '.join(now.unreachable)}[/]")
    return Group(*parts)  # type: ignore[arg-type]


def top(
    once: bool = typer.Option(False, "--once", help="Print one screen and exit."),
    interval: float = typer.Option(1.0, min=0.2, help="Seconds between refreshes."),
    broker: str = typer.Option(
        None,
        envvar="RABBITMQ_METRICS_URL",
        help="RabbitMQ's Prometheus endpoint (rabbitmq_prometheus), or several, comma-separated "
        f"(a cluster's nodes). Default: those make run wrote, else {BROKER_METRICS}.",
        show_default=False,
    ),
    vhost: str = typer.Option("/", envvar="WARREN_VHOST", help="The vhost to show."),
) -> None:
    """Live view of the queues, sagas and outbox of a running Warren (make run)."""
    services = targets()
    brokers = broker_endpoints(broker)

    async def loop(live: Live | None) -> None:
        before: Reading | None = None
        while True:
            now = await read(brokers, services, vhost)
            if live is None and before is not None:
                console.print(screen(now, before))
                return
            if live is not None:
                live.update(screen(now, before))
            before = now
            await asyncio.sleep(interval)

    if once:
        asyncio.run(loop(None))
        return
    # Ctrl-C is the way out.
    with (
        Live(console=console, refresh_per_second=4) as live,
        contextlib.suppress(KeyboardInterrupt),
    ):
        asyncio.run(loop(live))
