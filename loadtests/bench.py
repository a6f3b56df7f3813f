"""``make bench``: what this machine can do, measured in one run so the numbers can be compared.

1. **raw broker** -- aio-pika publishing persistent 200-byte messages with confirms, then
   consuming them with acks (msg/s): the ceiling of RabbitMQ + the client here;
2. **FastStream hop** -- a bare subscriber that consumes and publishes (persistent, confirmed);
3. **saga, traced** -- the whole system (as `make run` starts it, spans exported to a local
   OTLP receiver); offered load is stepped up until it is no longer *sustained*: every accepted
   order must reach its final state, and the p99 end-to-end latency stay under 2 s (no growing
   backlog). Then p50/p95/p99 at 50 % and 80 % of that rate;
4. **saga, untraced** -- the same with ``OTEL_SDK_DISABLED=true``, for the cost of tracing;
5. **database ceiling** -- the saga's own database operations (the real handlers, no broker)
   against the MongoDB stand-in, as fast as they go;
6. **burst** -- 3x the sustained rate for a few seconds, with queue depths sampled until
   they drain (peak shaving).

End-to-end latency is POST start -> the order's ``order.confirmed`` / ``order.cancelled`` seen
on the bus (a private queue bound to ``shop.events``), so following orders adds no HTTP load.

Prints a table, writes JSON and two PNGs under ``reports/``. Takes 5-10 minutes.
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
from pymongo import AsyncMongoClient, monitoring
from rich.console import Console
from rich.table import Table

from shared import auth

console = Console()
SKUS = ["RABBIT-PLUSH", "CARROT-MUG", "WARREN-MAP", "CLOVER-TEA", "HOP-SOCKS", "LETTUCE-BAG"]
# Broker deliveries per confirmed order: quote request + reply, order.placed x3 (inventory,
# notification, audit), stock.reserved x3, payment.succeeded x3, order.confirmed x2, 2 Celery
# tasks. (The audit's four were added with the audit service.)
DELIVERIES_PER_ORDER = 15
SUSTAINED_P99_MS = 2000.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- 1. raw broker -------------------------------------------------------------------------------


async def _publish_many(
    channel: aio_pika.abc.AbstractChannel,
    queue: str,
    count: int,
    body: bytes,
    *,
    persistent: bool,
    window: int = 256,
) -> float:
    """Publish ``count`` messages, ``window`` at a time; returns msg/s."""
    mode = aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
    started = time.perf_counter()
    for offset in range(0, count, window):
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=mode), routing_key=queue
                )
                for _ in range(min(window, count - offset))
            )
        )
    return count / (time.perf_counter() - started)


async def raw_broker(url: str, count: int, size: int = 200, window: int = 256) -> dict[str, float]:
    connection = await aio_pika.connect(url)
    async with connection:
        # What Warren's guarantees cost at the broker: transient, unconfirmed messages to a
        # queue that is not durable, against persistent, confirmed ones to a durable queue.
        # The transient queue is exclusive: RabbitMQ 4.3 refuses one that is not.
        loose = await connection.channel(publisher_confirms=False)
        scratch = await loose.declare_queue(
            f"bench.loose.{uuid.uuid4().hex[:6]}", durable=False, exclusive=True
        )
        loose_rate = await _publish_many(
            loose, scratch.name, count, b"x" * size, persistent=False, window=window
        )
        await scratch.delete(if_unused=False, if_empty=False)

        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(f"bench.raw.{uuid.uuid4().hex[:6]}", durable=True)
        publish_rate = await _publish_many(
            channel, queue.name, count, b"x" * size, persistent=True, window=window
        )

        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=window)
        consumed = 0
        started = time.perf_counter()
        queue_for_consumer = await consumer.get_queue(queue.name)
        async with queue_for_consumer.iterator() as messages:
            async for message in messages:
                await message.ack()
                consumed += 1
                if consumed == count:
                    break
        consume_rate = count / (time.perf_counter() - started)
        await queue.delete(if_unused=False, if_empty=False)
    return {
        "publish_msg_s": publish_rate,
        "publish_transient_unconfirmed_msg_s": loose_rate,
        "consume_msg_s": consume_rate,
        "messages": count,
    }


# --- 2. a bare FastStream hop --------------------------------------------------------------------


async def faststream_hop(url: str, count: int) -> dict[str, float]:
    from faststream.rabbit import RabbitQueue

    from shared.messaging import make_broker
    from shared.settings import WarrenSettings

    suffix = uuid.uuid4().hex[:6]
    source, target = RabbitQueue(f"bench.hop.in.{suffix}", durable=True), f"bench.hop.out.{suffix}"
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(source.name, durable=True)
        out = await channel.declare_queue(target, durable=True)
        await _publish_many(channel, source.name, count, b'{"n": 1}', persistent=True)
        broker = make_broker(WarrenSettings(rabbit_url=url, service_name="bench"), prefetch=64)

        @broker.subscriber(source)
        async def hop(body: dict[str, Any]) -> None:
            await broker.publish(body, queue=target, persist=True)

        started = time.perf_counter()
        await broker.start()
        while True:
            probe = await channel.declare_queue(target, durable=True, passive=True)
            if probe.declaration_result.message_count >= count:
                break
            await asyncio.sleep(0.05)
        rate = count / (time.perf_counter() - started)
        await broker.stop()
        await channel.queue_delete(source.name)
        await out.delete(if_unused=False, if_empty=False)
    return {"hop_msg_s": rate, "messages": count}


# --- 3/4. the saga ---------------------------------------------------------------------------------


@dataclass
class Stage:
    offered: float
    seconds: float
    accepted: int = 0
    refused: int = 0
    completed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)  # the HTTP answer alone (202)
    cpu_ms_per_order: dict[str, float] = field(default_factory=dict)  # by process

    # --8<-- [start:sustained]
    @property
    def sustained(self) -> bool:
        return (
            self.accepted > 0
            and self.completed == self.accepted
            and percentile(self.latencies_ms, 99) < SUSTAINED_P99_MS
            and self.accepted >= 0.95 * self.offered * self.seconds
        )
        # --8<-- [end:sustained]

    def summary(self) -> dict[str, Any]:
        return {
            "offered_orders_s": self.offered,
            "accepted": self.accepted,
            "refused": self.refused,
            "completed": self.completed,
            "p50_ms": percentile(self.latencies_ms, 50),
            "p95_ms": percentile(self.latencies_ms, 95),
            "p99_ms": percentile(self.latencies_ms, 99),
            "post_p50_ms": percentile(self.post_ms, 50),
            "post_p99_ms": percentile(self.post_ms, 99),
            "sustained": self.sustained,
            "cpu_ms_per_order": self.cpu_ms_per_order,
        }


# --8<-- [start:cpu-meter]
class CpuMeter:
    """CPU seconds used by each process of the run: Warren's, the database, RabbitMQ, us."""

    def __init__(self, system: Any, database: Any) -> None:
        import psutil

        self.processes: dict[str, Any] = {
            name: psutil.Process(executor.process.pid)
            for name, executor in system.processes.items()
            if executor.process is not None
        }
        self.processes["database (stand-in)"] = psutil.Process(database.process.pid)
        # The local broker, when there is one (the Erlang VM).
        broker = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]
        if broker:
            self.processes["rabbitmq (the whole broker)"] = broker[0]
        self.processes["load driver (this process)"] = psutil.Process()

    def read(self) -> dict[str, float]:
        import psutil

        used: dict[str, float] = {}
        for name, process in self.processes.items():
            try:
                times = process.cpu_times()
                seconds = times.user + times.system
                if name == "emails":  # the Celery worker's pool processes
                    for child in process.children(recursive=True):
                        child_times = child.cpu_times()
                        seconds += child_times.user + child_times.system
            except psutil.Error:
                continue
            used[name] = seconds
        return used
        # --8<-- [end:cpu-meter]


# --8<-- [start:final-events]
class FinalEvents:
    """Watches shop.events for orders reaching their final state."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[str, float] = {}

    async def start(self) -> None:
        from shared import topology

        self.connection = await aio_pika.connect(self.url)
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=500)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        from shared.contracts import OrderCancelled, OrderConfirmed

        for final in (OrderConfirmed, OrderCancelled):
            await queue.bind(topology.EVENTS.name, routing_key=final.TYPE)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.seen.setdefault(message.correlation_id or "", time.perf_counter())
            await message.ack()

        await queue.consume(on_message)
        # --8<-- [end:final-events]

    async def stop(self) -> None:
        await self.connection.close()


async def offer(
    api: str,
    final: FinalEvents,
    rate: float,
    seconds: float,
    label: str,
    meter: CpuMeter | None = None,
) -> Stage:
    """Offer ``rate`` orders/s for ``seconds``, then wait (up to 30 s) for them to finish."""
    stage = Stage(offered=rate, seconds=seconds)
    started_at: dict[str, float] = {}
    cpu_before = meter.read() if meter else {}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    # A hundred customers, each signed in once (bearer tokens signed before the clock starts).
    secret = auth.configured_secret()
    signed_in = [auth.bearer(f"bench-{c}", secret=secret) for c in range(100)]
    async with httpx.AsyncClient(base_url=api, timeout=10.0, limits=limits) as client:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            body = {
                "lines": [{"sku": SKUS[i % len(SKUS)], "quantity": 1}],
                "payment_token": "tok_visa",
            }
            try:
                response = await client.post(
                    "/orders",
                    json=body,
                    headers={
                        "baggage": "synthetic_request=true",
                        "Idempotency-Key": str(uuid.uuid4()),
                        **signed_in[i % 100],
                    },
                )
            except httpx.HTTPError:
                stage.refused += 1
                return
            stage.post_ms.append((time.perf_counter() - t0) * 1000)
            if response.status_code == 202:
                started_at[response.json()["order_id"]] = t0
                stage.accepted += 1
            else:
                stage.refused += 1

        total = int(rate * seconds)
        begin = time.perf_counter()
        tasks = []
        for i in range(total):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline and not all(o in final.seen for o in started_at):
        await asyncio.sleep(0.1)
    stage.latencies_ms = [
        (final.seen[o] - t0) * 1000 for o, t0 in started_at.items() if o in final.seen
    ]
    stage.completed = len(stage.latencies_ms)
    if meter and stage.accepted:
        cpu_after = meter.read()
        stage.cpu_ms_per_order = {
            name: (cpu_after[name] - cpu_before[name]) * 1000 / stage.accepted
            for name in cpu_after
            if name in cpu_before
        }
    s = stage.summary()
    console.print(
        f"  {label} {rate:6.0f}/s offered: accepted {s['accepted']}, completed {s['completed']},"
        f" p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms (POST p50 {s['post_p50_ms']:.0f} ms)"
        f" -> {'sustained' if stage.sustained else 'NOT sustained'}"
    )
    return stage


# --8<-- [start:tracing-modes]
# How each saga run traces. Exports use the SDK's default batching (every 5 s or 512 spans).
TRACING_MODES: dict[str, dict[str, str]] = {
    "traced": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},  # every order, as shipped
    # Head sampling: one order in ten is traced; the others carry the context, no spans.
    "sampled": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    "untraced": {"OTEL_SDK_DISABLED": "true"},
}
# --8<-- [end:tracing-modes]


async def saga(
    url: str, run_dir: Path, mode: str, rates: list[float], seconds: float
) -> dict[str, Any]:
    from shared.testing.system import (
        build_system,
        mongo_standin,
        mongo_url_of,
        seed_catalog,
        start_everything,
    )

    label = mode
    database = mongo_standin(run_dir / f"mongo-{label}")
    database.start()
    extra = {
        "PAYMENT_LATENCY_MS": "0",
        "PAYMENT_DECLINE_RATE": "0",
        "LOG_LEVEL": "WARNING",
        "QUOTE_TIMEOUT_SECONDS": "2",  # the shipped default, as in the test harness
        "OTEL_BSP_SCHEDULE_DELAY": "5000",  # the SDK's default (the test harness uses 200 ms)
        **TRACING_MODES[mode],
    }
    system = build_system(
        url, mongo_url_of(database), run_dir / label, f"bench{uuid.uuid4().hex[:6]}", extra
    )
    final = FinalEvents(url)
    result: dict[str, Any] = {"mode": mode, "stages": []}
    try:
        # Untraced, the OTLP receiver just idles: the services export nothing to it.
        start_everything(system)
        meter = CpuMeter(system, database)
        await final.start()
        await offer(system.api, final, 10, 3, f"{label} warm-up")
        best = 0.0
        for rate in rates:
            seed_catalog(system)
            stage = await offer(system.api, final, rate, seconds, label, meter)
            result["stages"].append(stage.summary())
            if not stage.sustained:
                break
            best = rate
        result["max_sustained_orders_s"] = best
        for share in (0.5, 0.8):
            if best:
                seed_catalog(system)
                stage = await offer(
                    system.api, final, best * share, seconds, f"{label} at {share:.0%}", meter
                )
                result[f"at_{int(share * 100)}pct"] = stage.summary()
        if mode == "traced" and best:
            result["burst"] = await burst(system, url, final, best * 3, 5, meter)
    finally:
        await final.stop()
        system.stop_all()
        database.stop()
    return result


async def burst(
    system: Any, url: str, final: FinalEvents, rate: float, seconds: float, meter: CpuMeter
) -> dict[str, Any]:
    """Offer 3x the sustained rate for a few seconds; sample queue depths until they drain."""
    from shared import topology
    from shared.testing.system import seed_catalog

    seed_catalog(system)
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    connection = await aio_pika.connect(url)

    async def sample() -> None:
        channel = await connection.channel()
        begin = time.perf_counter()
        while not stop.is_set():
            row: dict[str, Any] = {"t": time.perf_counter() - begin}
            names = [q.name for q in topology.ALL_QUEUES_WITH_DLQ] + [
                topology.INVENTORY_QUOTES.name
            ]
            for name in names:
                declared = await channel.declare_queue(name, passive=True)
                row[name] = declared.declaration_result.message_count
            samples.append(row)
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    stage = await offer(system.api, final, rate, seconds, "burst", meter)
    await asyncio.sleep(1)  # one more second of samples after the drain
    stop.set()
    await sampler
    await connection.close()
    return {"stage": stage.summary(), "queue_depths": samples}


# --- 5. the database's own ceiling -----------------------------------------------------------------


class OpCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in ("ping", "hello", "isMaster", "endSessions"):
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def database_ceiling(run_dir: Path, orders: int, concurrency: int = 32) -> dict[str, float]:
    """Run each order's database work through the real handlers, without the broker.

    The four services' handlers on the in-memory bus (``services/in_memory.py``), each with its
    own database on the MongoDB stand-in: a good order, as the saga runs it -- the quote,
    ``order.placed`` saved and projected and marked published by the outbox relay, inventory's
    decision, the charge, both saga steps, the settlement, and for each of the two emails the
    notification record plus the Celery task's claim and "sent" mark.
    """
    import logging

    import structlog

    from services.in_memory import open_shop
    from services.inventory.catalog import CATALOG, CatalogItem
    from shared.testing.system import mongo_standin, mongo_url_of

    # The handlers log every step at INFO: quiet them, their output is not the measure.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    server = mongo_standin(run_dir / "mongo-ceiling")
    server.start()
    counter = OpCounter()
    client: AsyncMongoClient = AsyncMongoClient(
        mongo_url_of(server), event_listeners=[counter], tz_aware=True
    )
    try:
        catalog = [CatalogItem(i.sku, i.name, i.price_cents, 10**6) for i in CATALOG]
        shop = await open_shop(lambda service: client[f"ceiling_{service}"], catalog=catalog)
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            # At most ``concurrency`` orders in flight; each drain delivers whatever is pending,
            # this order's saga steps among them, as concurrent consumers would.
            async with semaphore:
                await shop.place(SKUS[i % len(SKUS)], customer=f"c{i}", key=f"bench-{i}")
                await shop.bus.drain()

        await one(-1)  # warm up
        counter.count = 0
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(orders)))
        await shop.bus.drain()  # a step published while the other drains were finishing
        elapsed = time.perf_counter() - started
        confirmed = await shop.order.views.orders.count_documents({"status": "CONFIRMED"})
        assert confirmed == orders + 1, f"{confirmed} of {orders + 1} orders confirmed"
        return {
            "orders_s": orders / elapsed,
            "ops_s": counter.count / elapsed,
            "ops_per_order": counter.count / orders,
        }
    finally:
        await client.close()
        server.stop()


# --- report ----------------------------------------------------------------------------------------


def plot(results: dict[str, Any], latency_png: Path, burst_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    # One colour per saga run, one marker per percentile.
    runs = (("saga_traced", "-", "C0"), ("saga_sampled", ":", "C1"), ("saga_untraced", "--", "C2"))
    for key, style, colour in runs:
        stages = results.get(key, {}).get("stages", [])
        if not stages:
            continue
        offered = [s["offered_orders_s"] for s in stages]
        for q, marker in (("p50_ms", "o"), ("p95_ms", "s"), ("p99_ms", "^")):
            ax.plot(
                offered,
                [s[q] for s in stages],
                style,
                color=colour,
                marker=marker,
                label=f"{key.split('_')[1]} {q[:3]}",
            )
    ax.axhline(
        SUSTAINED_P99_MS, color="grey", linewidth=0.8, linestyle=":", label="sustained limit (p99)"
    )
    ax.set_yscale("log")
    ax.set_xlabel("offered load (orders/s)")
    ax.set_ylabel("end-to-end latency, POST -> final state (ms)")
    ax.set_title("Warren saga: latency against offered load")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(latency_png, dpi=110)

    samples = results.get("saga_traced", {}).get("burst", {}).get("queue_depths", [])
    if samples:
        fig, ax = plt.subplots(figsize=(8, 4))
        for name in [k for k in samples[0] if k != "t"]:
            ax.plot([s["t"] for s in samples], [s[name] for s in samples], label=name)
        ax.set_xlabel("seconds since the burst started")
        ax.set_ylabel("messages ready")
        ax.set_title("A burst absorbed by the queues and drained (peak shaving)")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(burst_png, dpi=110)


def report(results: dict[str, Any]) -> None:
    raw, hop = results["raw_broker"], results["faststream_hop"]
    traced, untraced, db = (
        results["saga_traced"],
        results["saga_untraced"],
        results["database_ceiling"],
    )
    table = Table("measure", "value", title="Warren benchmark (one run, this machine)")
    table.add_row("raw broker publish (confirms, persistent)", f"{raw['publish_msg_s']:,.0f} msg/s")
    table.add_row(
        "raw broker publish (no confirms, transient)",
        f"{raw['publish_transient_unconfirmed_msg_s']:,.0f} msg/s",
    )
    table.add_row("raw broker consume (acks)", f"{raw['consume_msg_s']:,.0f} msg/s")
    table.add_row("FastStream consume -> publish hop", f"{hop['hop_msg_s']:,.0f} msg/s")
    table.add_row("saga, traced: max sustained", f"{traced['max_sustained_orders_s']:.0f} orders/s")
    table.add_row(
        "saga, 10 % sampled: max sustained",
        f"{results['saga_sampled']['max_sustained_orders_s']:.0f} orders/s",
    )
    table.add_row(
        "saga, untraced: max sustained", f"{untraced['max_sustained_orders_s']:.0f} orders/s"
    )
    for share in ("at_50pct", "at_80pct"):
        if share in traced:
            s = traced[share]
            table.add_row(
                f"traced latency {share[3:5]}% of max ({s['offered_orders_s']:.0f}/s)",
                f"p50 {s['p50_ms']:.0f} / p95 {s['p95_ms']:.0f} / p99 {s['p99_ms']:.0f} ms",
            )
    table.add_row(
        "database stand-in ceiling (saga's mix)",
        f"{db['orders_s']:.0f} orders/s ({db['ops_s']:,.0f} ops/s, {db['ops_per_order']:.0f} ops/order)",
    )
    ratios = results["ratios"]
    table.add_row("saga deliveries/s / raw consume msg/s", f"{ratios['saga_vs_raw_broker']:.1%}")
    table.add_row("saga / database ceiling", f"{ratios['saga_vs_database']:.1%}")
    table.add_row("traced / untraced throughput", f"{ratios['traced_vs_untraced']:.1%}")
    table.add_row("10 % sampled / untraced throughput", f"{ratios['sampled_vs_untraced']:.1%}")
    if "traced_cpu_vs_untraced" in ratios:
        table.add_row(
            "CPU per order, traced / untraced (same load)",
            f"{ratios['traced_cpu_vs_untraced']:.1%}",
        )
        table.add_row(
            "CPU per order, 10 % sampled / untraced",
            f"{ratios['sampled_cpu_vs_untraced']:.1%}",
        )
    console.print(table)
    console.print(cpu_table(results))


# --8<-- [start:cpu-budget]
def cpu_budget(stage: dict[str, Any]) -> tuple[dict[str, float], float]:
    """CPU ms per order by process, and the orders/s that this machine's cores could carry."""
    spent = stage.get("cpu_ms_per_order") or {}
    per_order = sum(spent.values())
    cores = os.cpu_count() or 1
    return spent, (cores * 1000 / per_order if per_order else float("nan"))
    # --8<-- [end:cpu-budget]


def common_stage(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each saga's stage at the highest load that all of them sustained (same rate, fair)."""
    modes = [m for m in TRACING_MODES if f"saga_{m}" in results]
    rate = min(results[f"saga_{m}"]["max_sustained_orders_s"] for m in modes) if modes else 0
    return {
        m: stage
        for m in modes
        for stage in results[f"saga_{m}"]["stages"]
        if stage["offered_orders_s"] == rate
    }


def cpu_table(results: dict[str, Any]) -> Table:
    """Where the time goes: CPU per order, by process, all sagas at the same offered load."""
    stages = common_stage(results)
    budgets = {m: cpu_budget(stage) for m, stage in stages.items()}
    rate = next(iter(stages.values()))["offered_orders_s"] if stages else 0
    table = Table(
        "process",
        *stages,
        title=f"Where the time goes: ms of CPU per order at {rate:.0f} orders/s",
    )
    first = next(iter(budgets.values()))[0] if budgets else {}
    for name in sorted(first, key=lambda n: -first[n]):
        table.add_row(name, *(f"{b[0].get(name, float('nan')):.1f}" for b in budgets.values()))
    table.add_row("all", *(f"{sum(b[0].values()):.1f}" for b in budgets.values()))
    table.add_row(
        f"{os.cpu_count()} cores / all", *(f"{b[1]:.0f} orders/s" for b in budgets.values())
    )
    return table


def main(
    output: Path = typer.Option(
        Path("reports/bench.json"), help="Where to write the JSON results."
    ),
    messages: int = typer.Option(20000, help="Messages for the raw broker measurement."),
    hop_messages: int = typer.Option(5000, help="Messages for the FastStream hop."),
    rates: str = typer.Option(
        "5,10,15,20,25,30,35,40,50,60,80,100",
        help="Offered orders/s, stepped up until not sustained.",
    ),
    stage_seconds: float = typer.Option(10.0, help="Seconds per load step."),
    ceiling_orders: int = typer.Option(1000, help="Orders for the database ceiling."),
) -> None:
    """Measure the raw broker, a FastStream hop, the saga (traced, sampled, untraced), the database."""
    url = os.environ.get("RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/")
    output.parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(os.environ.get("BENCH_RUN_DIR", f"/tmp/warren-bench-{uuid.uuid4().hex[:6]}"))
    steps = [float(r) for r in rates.split(",")]

    async def run() -> dict[str, Any]:
        from shared import topology
        from shared.testing.system import refuse_a_broker_in_use

        # A clean broker, no backlog from earlier runs -- but never a live system's queues.
        await refuse_a_broker_in_use(url, topology.RETRY_DELAYS_SECONDS)
        await topology.delete_queues(url)
        results: dict[str, Any] = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}
        }
        console.print("[bold]1/6[/] raw broker (aio-pika)")
        results["raw_broker"] = await raw_broker(url, messages)
        console.print("[bold]2/6[/] FastStream consume -> publish hop")
        results["faststream_hop"] = await faststream_hop(url, hop_messages)
        for number, mode in enumerate(TRACING_MODES, start=3):
            console.print(f"[bold]{number}/6[/] saga, {mode}")
            results[f"saga_{mode}"] = await saga(url, run_dir, mode, steps, stage_seconds)
        console.print("[bold]6/6[/] database stand-in ceiling")
        results["database_ceiling"] = await database_ceiling(run_dir, ceiling_orders)
        traced, sampled, untraced = (
            results[f"saga_{mode}"]["max_sustained_orders_s"] for mode in TRACING_MODES
        )
        results["ratios"] = {
            "saga_vs_raw_broker": traced
            * DELIVERIES_PER_ORDER
            / results["raw_broker"]["consume_msg_s"],
            "saga_vs_database": traced / results["database_ceiling"]["orders_s"],
            "traced_vs_untraced": traced / untraced if untraced else float("nan"),
            "sampled_vs_untraced": sampled / untraced if untraced else float("nan"),
        }
        # Tracing's CPU cost per order, all three at the same load.
        cpu = {m: sum(cpu_budget(s)[0].values()) for m, s in common_stage(results).items()}
        if cpu.get("untraced"):
            results["ratios"]["traced_cpu_vs_untraced"] = cpu["traced"] / cpu["untraced"]
            results["ratios"]["sampled_cpu_vs_untraced"] = cpu["sampled"] / cpu["untraced"]
        return results

    results = asyncio.run(run())
    output.write_text(json.dumps(results, indent=2, default=str))
    plot(results, output.with_name("bench-latency.png"), output.with_name("bench-burst.png"))
    report(results)
    console.print(
        f"wrote {output}, {output.with_name('bench-latency.png')}, {output.with_name('bench-burst.png')}"
    )


if __name__ == "__main__":
    typer.run(main)
