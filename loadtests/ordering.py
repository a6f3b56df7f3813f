"""``make ordering-compare``: notification's order events one way and the other, side by side.

Notification keeps each order's emails in the order of its events. Its events reach it one of
two ways (``ORDER_EVENTS_VIA``, docs/17-keeping-order.md): one queue its replicas compete for,
the order put back together by sequence numbers (an early event goes round the shortest delay
queue until the one before it is handled: *held back*), or four partitions by order id, each
with a single active consumer. This puts both ways through the same two tests, on a system of
its own (as the drain benchmark starts it, on the broker and vhost of ``--rabbit-url``: never
make run's), with two notification replicas:

1. **backlog**: both replicas stopped, ``--orders`` orders are placed and finish (the saga does
   not wait for emails), so their events wait for notification -- then both replicas start
   together and handle the backlog;
2. **live**: both replicas running, ``--live`` orders at ``--rate`` per second.

For each it counts, from each replica's metrics, the events it handled and those it held back,
and, from the database, the emails recorded or sent out of their order's sequence (none, either
way: that is the guarantee); it times the backlog, and, live, an order from its 202 to its
confirmation email sent. It prints a table and a ``summary:`` line and writes
``reports/ordering.json``. The numbers are this machine's: they are printed, not adjusted.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from loadtests import counts
from loadtests.drain import place_orders
from shared import topology

console = Console(width=130)
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/warren-ordering"
WAYS = ("queue", "partitions")
REPLICAS = ("notification", "notification_2")


@dataclass
class Phase:
    """One way, one test: what the two replicas did, and what the customers got."""

    way: str
    test: str  # backlog / live
    orders: int = 0
    seconds: float = float("nan")  # backlog: replicas started -> every email recorded
    handled: dict[str, float] = field(default_factory=dict)  # by replica
    held_back: dict[str, float] = field(default_factory=dict)  # by replica
    per_partition: dict[str, int] = field(default_factory=dict)  # backlog: events waiting
    recorded_out_of_order: int = 0
    sent_out_of_order: int = 0
    to_confirmation_ms: list[float] = field(default_factory=list)  # live: 202 -> email sent

    @property
    def events_per_s(self) -> float:
        return sum(self.handled.values()) / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        latencies = sorted(out.pop("to_confirmation_ms"))
        out["events_per_s"] = self.events_per_s
        if latencies:
            out["to_confirmation_ms_p50"] = statistics.median(latencies)
            out["to_confirmation_ms_p95"] = latencies[int(0.95 * (len(latencies) - 1))]
        return out


# --- what the replicas and the database say --------------------------------------------------


def replica_counts(system: Any, name: str) -> tuple[float, float]:
    """Events one replica handled (or found handled: duplicates) and held back since it
    started, on the order-events queues of both ways."""
    answer = httpx.get(f"http://127.0.0.1:{system.ports[name]}/metrics", timeout=5)
    handled = held = 0.0
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            queue = sample.labels.get("queue", "")
            if not sample.name.endswith("_total") or family.name != "warren_messages":
                continue
            if queue.startswith(("notification.order-events", "notification.order-partitions")):
                outcome = sample.labels.get("outcome")
                handled += sample.value if outcome in ("handled", "duplicate") else 0
                held += sample.value if outcome == "held_back" else 0
    return handled, held


async def out_of_order(db: Any, order_ids: list[str]) -> tuple[int, int]:
    """Orders whose "received" email was recorded, or sent, after their confirmation's."""
    recorded = sent = 0
    for order_id in order_ids:
        notes = {
            note["event_type"]: note
            async for note in db["notifications"].find({"order_id": order_id})
        }
        first, second = notes.get("order.placed"), notes.get("order.confirmed")
        if first is None or second is None:
            continue
        recorded += first["created_at"] > second["created_at"]
        if first.get("sent_at") and second.get("sent_at"):
            sent += first["sent_at"] > second["sent_at"]
    return recorded, sent


async def emails(db: Any, order_ids: list[str], state: str | None = None) -> int:
    query: dict[str, Any] = {"order_id": {"$in": order_ids}}
    if state:
        query["state"] = state
    return await db["notifications"].count_documents(query)


async def wait_for(probe: Any, done: Any, what: str, timeout: float = 300.0) -> float:
    """Poll ``probe`` until ``done(value)``; the seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if done(await probe()):
            return time.perf_counter() - started
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


# --- the two tests ---------------------------------------------------------------------------

ORDER_EVENT_QUEUES = (
    topology.NOTIFICATION_ORDER_EVENTS.name,
    *(queue.name for queue in topology.NOTIFICATION_ORDER_PARTITIONS.partitions),
)


async def waiting(channel: Any) -> dict[str, int]:
    """Ready messages in notification's order-events queues, both ways."""
    found = await counts.depths(channel)
    return {name: found[name][0] for name in ORDER_EVENT_QUEUES}


async def backlog(system: Any, db: Any, way: str, orders: int) -> Phase:
    phase = Phase(way, "backlog")
    for name in REPLICAS:
        system.restart(name, ORDER_EVENTS_VIA=way)  # binds this way to shop.events
    await asyncio.gather(*(asyncio.to_thread(system.stop, name) for name in REPLICAS))
    placed = await place_orders(system.api, orders, customers="ordering")
    phase.orders = len(placed)
    connection = await aio_pika.connect(system.env["RABBIT_URL"])
    async with connection:
        channel = await connection.channel()
        await wait_for(
            lambda: waiting(channel),
            lambda now: sum(now.values()) >= 2 * len(placed),
            "the orders' events waiting for notification",
        )
        phase.per_partition = {k: v for k, v in (await waiting(channel)).items() if v}
    console.print(f"    {way}: {2 * len(placed)} events waiting: {phase.per_partition}")
    ids = list(placed)
    started = asyncio.gather(*(asyncio.to_thread(system.start, name) for name in REPLICAS))
    phase.seconds = await wait_for(
        lambda: emails(db, ids), lambda n: n >= 2 * len(ids), "every email recorded"
    )
    await started
    await wait_for(lambda: emails(db, ids, "sent"), lambda n: n >= 2 * len(ids), "every email sent")
    await _tally(system, db, phase, ids)
    return phase


async def live(system: Any, db: Any, way: str, orders: int, rate: float) -> Phase:
    phase = Phase(way, "live")
    before = {name: replica_counts(system, name) for name in REPLICAS}
    placed = await place_orders(system.api, orders, customers="ordering", rate=rate)
    phase.orders = len(placed)
    ids = list(placed)
    await wait_for(lambda: emails(db, ids, "sent"), lambda n: n >= 2 * len(ids), "every email sent")
    async for note in db["notifications"].find(
        {"order_id": {"$in": ids}, "event_type": "order.confirmed"}
    ):
        sent = datetime.fromisoformat(note["sent_at"]).timestamp()  # the worker writes ISO 8601
        phase.to_confirmation_ms.append((sent - placed[note["order_id"]]) * 1000)
    await _tally(system, db, phase, ids, before)
    return phase


async def _tally(
    system: Any,
    db: Any,
    phase: Phase,
    ids: list[str],
    before: dict[str, tuple[float, float]] | None = None,
) -> None:
    for name in REPLICAS:
        handled, held = replica_counts(system, name)
        base = (before or {}).get(name, (0.0, 0.0))
        phase.handled[name], phase.held_back[name] = handled - base[0], held - base[1]
    phase.recorded_out_of_order, phase.sent_out_of_order = await out_of_order(db, ids)


async def run(url: str, orders: int, live_orders: int, rate: float) -> list[Phase]:
    from pymongo import AsyncMongoClient

    from shared.testing.system import (
        build_system,
        free_port,
        mongo_standin,
        mongo_url_of,
        reset_broker,
        seed_catalog,
        service_process,
        start_everything,
    )

    run_dir = Path(f"/tmp/warren-ordering-{uuid.uuid4().hex[:6]}")
    await reset_broker(url)  # refuses a vhost a live system consumes from
    database = mongo_standin(run_dir / "mongo")
    database.start()
    extra = {"LOG_LEVEL": "WARNING", "PAYMENT_LATENCY_MS": "0"}
    system = build_system(url, mongo_url_of(database), run_dir, f"ord{uuid.uuid4().hex[:6]}", extra)
    system.processes["notification_2"] = service_process(system, "notification_2", free_port())
    console.print(f"system: {run_dir} (logs in {run_dir / 'logs'})")
    client: AsyncMongoClient = AsyncMongoClient(mongo_url_of(database), tz_aware=True)
    db = client[system.database("notification")]
    phases = []
    try:
        start_everything(system)
        for way in WAYS:
            console.print(f"[bold]{way}[/]: backlog of {orders} orders, then {live_orders} live")
            phases.append(await backlog(system, db, way, orders))
            phases.append(await live(system, db, way, live_orders, rate))
            seed_catalog(system)  # the next way starts with the same stock
        return phases
    finally:
        await client.close()
        system.stop_all()
        database.stop()


# --- report ----------------------------------------------------------------------------------


def report(phases: list[Phase]) -> Table:
    table = Table(title="notification's order events: one queue vs partitions (2 replicas)")
    for column in (
        "way",
        "test",
        "orders",
        "events/s",
        "handled by replica",
        "held back",
        "out of order (recorded/sent)",
        "202 -> confirmation email p50/p95",
    ):
        table.add_column(column)
    for phase in phases:
        summary = phase.summary()
        latency = (
            f"{summary['to_confirmation_ms_p50']:.0f} / {summary['to_confirmation_ms_p95']:.0f} ms"
            if "to_confirmation_ms_p50" in summary
            else "-"
        )
        table.add_row(
            phase.way,
            phase.test,
            str(phase.orders),
            f"{phase.events_per_s:.0f}" if phase.test == "backlog" else "-",
            " / ".join(f"{v:.0f}" for v in phase.handled.values()),
            f"{sum(phase.held_back.values()):.0f}",
            f"{phase.recorded_out_of_order} / {phase.sent_out_of_order}",
            latency,
        )
    return table


def main(
    orders: int = typer.Option(300, min=1, help="Orders in each backlog."),
    live_orders: int = typer.Option(200, "--live", min=1, help="Orders placed live, each way."),
    rate: float = typer.Option(20.0, min=0.1, help="Live orders per second."),
    rabbit_url: str = typer.Option(
        DEFAULT_URL,
        envvar="ORDERING_RABBIT_URL",
        help="The broker and vhost (its Warren queues are deleted first: never make run's).",
    ),
    output: Path = typer.Option(Path("reports/ordering.json"), help="Where to write the results."),
) -> None:
    """Notification's order events through one queue, then through partitions: a backlog and
    live orders each way, with two replicas; handled, held back, out of order, latency."""
    console.print(f"comparing {WAYS} on {rabbit_url.rsplit('@', 1)[-1]}")
    phases = asyncio.run(run(rabbit_url, orders, live_orders, rate))
    results = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "phases": [phase.summary() for phase in phases],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    console.print(report(phases))
    by = {(p.way, p.test): p for p in phases}
    console.print(
        "summary: "
        + "; ".join(
            f"{way}: held back {sum(by[way, 'backlog'].held_back.values()):.0f} (backlog) "
            f"{sum(by[way, 'live'].held_back.values()):.0f} (live), out of order "
            f"{by[way, 'backlog'].sent_out_of_order + by[way, 'live'].sent_out_of_order}"
            for way in WAYS
        )
    )
    console.print(f"wrote {output}")


if __name__ == "__main__":
    typer.run(main)
