"""``make drain``: a payment backlog drained by 1, 2 and 4 consumers, its depth over time.

For each consumer count, on a system of its own (started as the benchmark starts it, on the
broker and vhost of ``--rabbit-url``: never make run's):

1. every payment replica is stopped, and ``--orders`` orders are placed through the API (the
   benchmark's customers and tokens), so that ``payment.stock-reserved`` fills: a backlog;
2. once the rest of the saga is quiet, that many payment replicas start together (each a
   consumer with prefetch 4, as `make run`'s), and the queue's depth is read from the broker
   every ``--interval`` seconds (a passive declare: its ready messages) until every order has
   its payment outcome on ``shop.events``;
3. the replicas stop, the rest of the saga finishes, the stock is reset, and the next count
   starts from a fresh backlog of the same size.

It prints each drain's time and rate, the machine's CPU use while it drained and the CPU each
process spent, and writes ``reports/drain.json`` and a plot of depth over time, one line per
consumer count (``docs/img/backlog-drain.png``). On a machine with few cores more consumers
stop helping once the CPU is busy: the numbers say so, they are not adjusted.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import typer
from rich.console import Console
from rich.table import Table

from loadtests.counts import depths
from shared import auth

console = Console()
QUEUE = "payment.stock-reserved"
# Where a payment outcome goes next: what payment's consumers hand on to the rest of the saga.
DOWNSTREAM = (
    "order.saga-replies",
    "inventory.payment-outcomes",
    "notification.order-events",
    "notification.emails",
    "audit.events",
)
SKUS = ["RABBIT-PLUSH", "CARROT-MUG", "WARREN-MAP", "CLOVER-TEA", "HOP-SOCKS", "LETTUCE-BAG"]
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/warren-drain"


def consumer_counts(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``: positive, at most 9 (one port each, as make run)."""
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(not 1 <= count <= 9 for count in counts):
        raise typer.BadParameter("consumer counts are 1 to 9, comma-separated, e.g. 1,2,4")
    return counts


# --- CPU -----------------------------------------------------------------------------------------


class Cpu:
    """CPU seconds of each process of the system (and of the broker and the database), and the
    machine's busy and total CPU time, read at two moments."""

    def __init__(self, system: Any, database: Any) -> None:
        self.system, self.database = system, database
        self.broker_pid = _broker_pid()

    def read(self) -> dict[str, float]:
        import psutil

        pids = {
            name: executor.process.pid
            for name, executor in self.system.processes.items()
            if executor.process is not None and executor.running()
        }
        pids["database (stand-in)"] = self.database.process.pid
        if self.broker_pid:
            pids["rabbitmq"] = self.broker_pid
        used: dict[str, float] = {}
        for name, pid in pids.items():
            try:
                process = psutil.Process(pid)
                family = [process, *process.children(recursive=True)]  # Celery's pool
                used[name] = sum(p.cpu_times().user + p.cpu_times().system for p in family)
            except psutil.Error:
                continue
        # This process alone: every process of the system is one of its children.
        driver = psutil.Process().cpu_times()
        used["load driver"] = driver.user + driver.system
        machine = psutil.cpu_times()
        used["machine: busy"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        used["machine: all"] = sum(machine)
        return used


def _broker_pid() -> int | None:
    """The Erlang VM listening on 5672, when this process may see it."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == 5672 and conn.status == "LISTEN":
                return conn.pid
    except psutil.Error:
        return None
    return None


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process spent between two reads (processes in both)."""
    return {name: after[name] - before[name] for name in after if name in before}


# --- one round -----------------------------------------------------------------------------------


@dataclass
class Drain:
    consumers: int
    orders: int
    placed: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)  # t, depth, consumers
    startup_s: float = float("nan")  # replicas started -> first payment outcome
    drain_s: float = float("nan")  # first payment outcome -> the last
    finished: int = 0
    saga_s: float = float("nan")  # replicas started -> the last order confirmed or cancelled
    downstream_peak: int = 0  # the most messages waiting in DOWNSTREAM at once
    cpu_s: dict[str, float] = field(default_factory=dict)  # while draining, by process

    @property
    def rate(self) -> float:
        return self.finished / self.drain_s if self.drain_s > 0 else float("nan")

    @property
    def others_cpu_s(self) -> float:
        """CPU the machine spent outside this run (other work on a shared host)."""
        ours = sum(v for k, v in self.cpu_s.items() if not k.startswith("machine:"))
        return max(0.0, self.cpu_s.get("machine: busy", 0.0) - ours)

    @property
    def machine_busy(self) -> float:
        total = self.cpu_s.get("machine: all", 0.0)
        return self.cpu_s.get("machine: busy", 0.0) / total if total else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "consumers": self.consumers,
            "orders": self.orders,
            "placed": self.placed,
            "finished": self.finished,
            "startup_s": self.startup_s,
            "drain_s": self.drain_s,
            "orders_per_s": self.rate,
            "all_orders_final_s": self.saga_s,
            "downstream_peak": self.downstream_peak,
            "machine_cpu_busy": self.machine_busy,
            "cpu_s_while_draining": self.cpu_s,
            "cpu_s_outside_this_run": self.others_cpu_s,
            "samples": self.samples,
        }


class Outcomes:
    """Payment outcomes and final orders seen on shop.events (a private queue), by order id."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[str, float] = {}  # payment.succeeded / payment.failed
        self.final: dict[str, float] = {}  # order.confirmed / order.cancelled

    async def start(self) -> None:
        from shared import topology
        from shared.contracts import OrderCancelled, OrderConfirmed, PaymentFailed, PaymentSucceeded

        self.connection = await aio_pika.connect(self.url)
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=500)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for event in (PaymentSucceeded, PaymentFailed, OrderConfirmed, OrderCancelled):
            await queue.bind(topology.EVENTS.name, routing_key=event.TYPE)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            into = self.seen if (message.routing_key or "").startswith("payment.") else self.final
            into.setdefault(message.correlation_id or "", time.perf_counter())
            await message.ack()

        await queue.consume(on_message)

    async def stop(self) -> None:
        await self.connection.close()


async def place_orders(
    api: str,
    count: int,
    concurrency: int = 16,
    *,
    rate: float | None = None,
    customers: str = "drain",
) -> dict[str, float]:
    """``count`` orders through the API, ``concurrency`` at a time (and at ``rate`` per second,
    if given), from a hundred ``<customers>-<n>``: order id -> when its 202 came."""
    secret = auth.configured_secret()
    signed_in = [auth.bearer(f"{customers}-{c}", secret=secret) for c in range(100)]
    placed: dict[str, float] = {}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=api, timeout=30.0) as client:

        async def one(i: int) -> None:
            if rate:
                await asyncio.sleep(i / rate)
            body = {
                "lines": [{"sku": SKUS[i % len(SKUS)], "quantity": 1}],
                "payment_token": "tok_visa",
            }
            headers = {"Idempotency-Key": str(uuid.uuid4()), **signed_in[i % 100]}
            async with gate:
                try:
                    response = await client.post("/orders", json=body, headers=headers)
                except httpx.HTTPError:
                    return
            if response.status_code == 202:
                placed[response.json()["order_id"]] = time.time()
                if len(placed) % 100 == 0:
                    console.print(f"    {len(placed)} orders placed")

        await asyncio.gather(*(one(i) for i in range(count)))
    return placed


async def wait_until(
    channel: aio_pika.abc.AbstractChannel, backlog: int, what: str, timeout: float = 180.0
) -> None:
    """Until ``QUEUE`` holds ``backlog`` messages and every other queue is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = await depths(channel)
        busy = {name: ready for name, (ready, _) in now.items() if ready and name != QUEUE}
        if now[QUEUE][0] == backlog and not busy:
            return
        await asyncio.sleep(0.5)
    console.print(
        f"[yellow]    {what}: not quiet after {timeout:.0f} s ({QUEUE} {now[QUEUE][0]}, {busy})[/]"
    )


async def drain_with(
    system: Any, cpu: Cpu, url: str, consumers: int, orders: int, interval: float
) -> Drain:
    """One round: a fresh backlog of ``orders``, drained by ``consumers`` payment replicas."""
    from shared.testing.system import seed_catalog

    drain = Drain(consumers=consumers, orders=orders)
    replicas = [f"payment_{i}" for i in range(1, consumers + 1)]
    seed_catalog(system)
    connection = await aio_pika.connect(url)
    outcomes = Outcomes(url)
    await outcomes.start()
    try:
        channel = await connection.channel()
        console.print(
            f"  [bold]{consumers} consumer(s)[/]: placing {orders} orders, payment stopped"
        )
        drain.placed = len(await place_orders(system.api, orders))
        await wait_until(channel, drain.placed, "the backlog")
        console.print(
            f"    backlog: {drain.placed} messages in {QUEUE}; starting {len(replicas)} replica(s)"
        )
        await _drain(system, cpu, channel, outcomes, drain, replicas, interval)
        await asyncio.gather(*(asyncio.to_thread(system.stop, name) for name in replicas))
        await wait_until(channel, 0, "the rest of the saga")
    finally:
        await outcomes.stop()
        await connection.close()
    console.print(
        f"    drained {drain.finished} in {drain.drain_s:.1f} s: {drain.rate:.1f} orders/s "
        f"(first outcome {drain.startup_s:.1f} s after the start; machine CPU "
        f"{drain.machine_busy:.0%} busy while draining, {drain.others_cpu_s:.1f} s of it "
        f"outside this run); every order final after "
        f"{drain.saga_s:.1f} s, at most {drain.downstream_peak} messages waiting downstream"
    )
    return drain


async def _drain(
    system: Any,
    cpu: Cpu,
    channel: aio_pika.abc.AbstractChannel,
    outcomes: Outcomes,
    drain: Drain,
    replicas: list[str],
    interval: float,
    timeout: float = 600.0,
) -> None:
    """Start the replicas together; sample the depths until every order is final."""
    begin = time.perf_counter()
    starting = asyncio.gather(*(asyncio.to_thread(system.start, name) for name in replicas))
    first_cpu = last_cpu = None
    while time.perf_counter() - begin < timeout:
        sample = await _sample(channel, time.perf_counter() - begin)
        drain.samples.append(sample)
        drain.downstream_peak = max(drain.downstream_peak, int(sample["downstream"]))
        if first_cpu is None and outcomes.seen:
            first_cpu = cpu.read()
        if last_cpu is None and len(outcomes.seen) >= drain.placed:
            last_cpu = cpu.read()
        if len(outcomes.final) >= drain.placed:
            break
        await asyncio.sleep(interval)
    await starting
    times = sorted(outcomes.seen.values())
    drain.finished = len(times)
    if times:
        drain.startup_s, drain.drain_s = times[0] - begin, times[-1] - times[0]
    if outcomes.final:
        drain.saga_s = max(outcomes.final.values()) - begin
    if first_cpu is not None:
        drain.cpu_s = cpu_used(first_cpu, last_cpu or cpu.read())


async def _sample(channel: aio_pika.abc.AbstractChannel, t: float) -> dict[str, float]:
    """The payment queue's depth and consumers, and what waits downstream of it."""
    declared = await channel.declare_queue(QUEUE, passive=True)
    result = declared.declaration_result
    downstream = 0
    for name in DOWNSTREAM:
        downstream += (
            await channel.declare_queue(name, passive=True)
        ).declaration_result.message_count
    return {
        "t": t,
        "depth": result.message_count,
        "consumers": result.consumer_count,
        "downstream": downstream,
    }


# --- the whole run -------------------------------------------------------------------------------


async def run(
    url: str, counts: list[int], orders: int, interval: float, extra: dict[str, str]
) -> list[Drain]:
    from shared.testing.system import (
        build_system,
        mongo_standin,
        mongo_url_of,
        reset_broker,
        start_everything,
    )

    run_dir = Path(os.environ.get("DRAIN_RUN_DIR", f"/tmp/warren-drain-{uuid.uuid4().hex[:6]}"))
    await reset_broker(url)  # refuses a vhost a live system consumes from
    database = mongo_standin(run_dir / "mongo")
    database.start()
    system = build_system(
        url,
        mongo_url_of(database),
        run_dir,
        f"drain{uuid.uuid4().hex[:6]}",
        extra,
        payments=max(counts),
    )
    console.print(f"system: {run_dir} (logs in {run_dir / 'logs'})")
    try:
        start_everything(system)
        payments = [name for name in system.processes if name.startswith("payment_")]
        await asyncio.gather(*(asyncio.to_thread(system.stop, name) for name in payments))
        cpu = Cpu(system, database)
        return [await drain_with(system, cpu, url, count, orders, interval) for count in counts]
    finally:
        system.stop_all()
        database.stop()


def plot(drains: list[Drain], png: Path, gateway_ms: int) -> None:
    """Depth over time, one line per consumer count; below, what waits downstream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=[3, 2])
    for drain in drains:
        t = [s["t"] for s in drain.samples]
        label = (
            f"{drain.consumers} consumer{'s' if drain.consumers > 1 else ''}: drained in "
            f"{drain.drain_s:.0f} s ({drain.rate:.0f}/s), all final at {drain.saga_s:.0f} s"
        )
        top.plot(t, [s["depth"] for s in drain.samples], label=label)
        bottom.plot(t, [s["downstream"] for s in drain.samples])
    orders = drains[0].placed if drains else 0
    top.set_title(
        f"A backlog of {orders} payments drained ({gateway_ms} ms gateway, {os.cpu_count()} cores)"
    )
    top.set_ylabel(f"ready in {QUEUE}")
    bottom.set_ylabel("ready downstream\n(saga replies, emails ...)")
    bottom.set_xlabel("seconds since the payment replicas were started")
    for ax in (top, bottom):
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    top.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def report(drains: list[Drain]) -> Table:
    table = Table(
        "consumers",
        "orders",
        "start → first",
        "drain",
        "orders/s",
        "vs 1",
        "machine CPU busy",
        "payment's share",
        "downstream peak",
        "all final",
        title="Draining a payment backlog (one run, this machine)",
    )
    base = drains[0].rate if drains else float("nan")
    for d in drains:
        payment = sum(v for k, v in d.cpu_s.items() if k.startswith("payment_"))
        busy = d.cpu_s.get("machine: busy", 0.0)
        table.add_row(
            str(d.consumers),
            str(d.finished),
            f"{d.startup_s:.1f} s",
            f"{d.drain_s:.1f} s",
            f"{d.rate:.1f}",
            f"{d.rate / base:.2f}x",
            f"{d.machine_busy:.0%}",
            f"{payment / busy:.0%}" if busy else "-",
            str(d.downstream_peak),
            f"{d.saga_s:.1f} s",
        )
    return table


def main(
    orders: int = typer.Option(600, min=1, help="Orders in each backlog."),
    consumers: str = typer.Option(
        "1,2,4", help="Payment consumers (replicas) per round, in order."
    ),
    interval: float = typer.Option(0.5, min=0.1, help="Seconds between two reads of the depth."),
    gateway_latency_ms: int = typer.Option(
        50, min=0, help="The simulated gateway's latency (PAYMENT_LATENCY_MS; .env's is 50)."
    ),
    rabbit_url: str = typer.Option(
        DEFAULT_URL,
        envvar="DRAIN_RABBIT_URL",
        help="The broker and vhost (its Warren queues are deleted first: never make run's).",
    ),
    output: Path = typer.Option(Path("reports/drain.json"), help="Where to write the results."),
    png: Path = typer.Option(Path("docs/img/backlog-drain.png"), help="Where to draw the plot."),
) -> None:
    """Stop payment, let a backlog build, drain it with 1, 2 and 4 consumers; plot the depth."""
    counts = consumer_counts(consumers)
    extra = {
        "PAYMENT_LATENCY_MS": str(gateway_latency_ms),
        "PAYMENT_DECLINE_RATE": "0",
        "LOG_LEVEL": "WARNING",
        "OTEL_BSP_SCHEDULE_DELAY": "5000",  # the SDK's default, as the benchmark's traced saga
    }
    console.print(
        f"draining {orders} orders with {counts} consumer(s) on {rabbit_url.rsplit('@', 1)[-1]}"
    )
    drains = asyncio.run(run(rabbit_url, counts, orders, interval, extra))
    results = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "gateway_latency_ms": gateway_latency_ms,
        "drains": [d.summary() for d in drains],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    plot(drains, png, gateway_latency_ms)
    console.print(report(drains))
    console.print(f"wrote {output} and {png}")


if __name__ == "__main__":
    typer.run(main)
