"""``make bench``: what this machine can do, measured in one run so the numbers can be compared.

1. **raw broker** -- aio-pika publishing persistent 200-byte messages with confirms, then
   consuming them with acks (msg/s): the ceiling of RabbitMQ + the client here;
2. **one hop, like for like** (``loadtests/hops.py``) -- consume from a quorum queue, publish
   the next event with confirms, ack: aio-pika alone, bare FastStream, Warren's consumer; the
   same queues, bodies, headers, prefetch and event loop (uvloop) -- ``hop_vs_raw`` is
   Warren's CPU per message over aio-pika's;
3. **the saga**, the whole system as `make run` starts it, once per tracing mode: ``shipped``
   (the defaults: every person's order traced, 1 in 100 of the load generator's -- this
   benchmark's orders carry its baggage), ``traced`` (every order, spans exported) and
   ``untraced`` (no spans recorded). Offered load is stepped up (5, 10, 20 orders/s, then on)
   until it is no longer *sustained*: every accepted order final and its two emails sent, p99
   end-to-end latency at most 500 ms, no backlog left. Then 50 % and 80 % of that rate. Each
   stage counts what an order costs -- CPU by process; messages published, confirmed,
   delivered and acked (RabbitMQ's own counters); spans, database commands by type and HTTP
   requests (the traces of the stage's orders);
4. **database ceiling** -- the saga's own database operations (the real handlers, no broker)
   against the MongoDB stand-in, as fast as they go;
5. **burst** -- 3x the sustained rate for a few seconds, queue depths sampled until they drain.

End-to-end latency is POST start -> the order's ``order.confirmed`` / ``order.cancelled`` seen
on the bus (a private queue bound to ``shop.events``), so following orders adds no HTTP load.
Noise is recorded, not hidden: a pure-Python calibration loop and the CPU stolen by the
hypervisor at the start and the end, and ``--repeats`` runs the modes interleaved (ABCABC...)
for min/median/max. A manifest of versions and settings goes into the JSON.

The last line is for scripts: ``summary: cpu_ms_per_order=<n> max_orders_per_s=<n>
hop_vs_raw=<ratio>`` (the shipped defaults, the rule above). Prints tables, writes JSON and two
PNGs under ``reports/``. Takes 10-20 minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import typer
from pymongo import AsyncMongoClient, monitoring
from rich.console import Console
from rich.table import Table

from loadtests import counts
from loadtests.hops import hops
from shared import auth

console = Console(width=130)
SKUS = ["RABBIT-PLUSH", "CARROT-MUG", "WARREN-MAP", "CLOVER-TEA", "HOP-SOCKS", "LETTUCE-BAG"]
SUSTAINED_P99_MS = 500.0
EMAILS_PER_ORDER = 2  # "received" and "confirmed": the benchmark's cards are never declined
LOAD_DRIVER = "load driver (this process)"  # not the system: its CPU is left out of the totals
BROKER_METRICS = os.environ.get("BENCH_RABBIT_METRICS_URL", "http://127.0.0.1:15692/metrics")


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


# --- 2. one hop, like for like: loadtests/hops.py


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
        self.processes[LOAD_DRIVER] = psutil.Process()

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


# --- 3. the saga -----------------------------------------------------------------------------------


@dataclass
class Stage:
    offered: float
    seconds: float
    accepted: int = 0
    refused: int = 0
    completed: int = 0
    emails_sent: int = 0
    elapsed_s: float = float("nan")  # first POST -> every order final and emailed (or given up)
    latencies_ms: list[float] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)  # the HTTP answer alone (202)
    cpu_ms_per_order: dict[str, float] = field(default_factory=dict)  # by process
    cpu_s: float = 0.0  # every process together, over elapsed_s
    broker_per_order: dict[str, float] = field(default_factory=dict)
    spans: dict[str, Any] = field(default_factory=dict)

    # --8<-- [start:sustained]
    @property
    def sustained(self) -> bool:
        """Every order accepted, final, and its emails sent, with p99 <= 500 ms."""
        return (
            self.accepted > 0
            and self.accepted >= 0.95 * self.offered * self.seconds
            and self.completed == self.accepted
            and self.emails_sent >= EMAILS_PER_ORDER * self.accepted
            and percentile(self.latencies_ms, 99) <= SUSTAINED_P99_MS
        )
        # --8<-- [end:sustained]

    def summary(self) -> dict[str, Any]:
        return {
            "offered_orders_s": self.offered,
            "accepted": self.accepted,
            "refused": self.refused,
            "completed": self.completed,
            "emails_sent": self.emails_sent,
            "p50_ms": percentile(self.latencies_ms, 50),
            "p95_ms": percentile(self.latencies_ms, 95),
            "p99_ms": percentile(self.latencies_ms, 99),
            "post_p50_ms": percentile(self.post_ms, 50),
            "post_p99_ms": percentile(self.post_ms, 99),
            "sustained": self.sustained,
            "elapsed_s": self.elapsed_s,
            "cpu_s": self.cpu_s,
            "cpu_ms_per_order": self.cpu_ms_per_order,
            "broker_per_order": self.broker_per_order,
            "spans": self.spans,
        }


# --- one stage: offer a rate, wait for the orders and their emails, count --------------------------


@dataclass
class Probe:
    """What a stage reads besides the bus: the processes' CPU, the broker's counters, the
    system's spans, and the mail sink's Maildir (the emails sent)."""

    meter: CpuMeter
    spans_file: Path
    maildir: Path
    span_flush_s: float  # wait for the last spans' export before counting them (0: do not)


async def _post_orders(
    api: str, rate: float, seconds: float, stage: Stage, started: dict[str, float], traces: set[str]
) -> None:
    """Offer ``rate`` orders/s for ``seconds``, each from one of a hundred customers, each
    tagged as load-test traffic (the baggage ``synthetic_request=true``)."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    secret = auth.configured_secret()
    signed_in = [auth.bearer(f"bench-{c}", secret=secret) for c in range(100)]
    async with httpx.AsyncClient(base_url=api, timeout=10.0, limits=limits) as client:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            body = {
                "lines": [{"sku": SKUS[i % len(SKUS)], "quantity": 1}],
                "payment_token": "tok_visa",
            }
            headers = {
                "baggage": "synthetic_request=true",
                "Idempotency-Key": str(uuid.uuid4()),
                **signed_in[i % 100],
            }
            try:
                response = await client.post("/orders", json=body, headers=headers)
            except httpx.HTTPError:
                stage.refused += 1
                return
            stage.post_ms.append((time.perf_counter() - t0) * 1000)
            if response.status_code == 202:
                started[response.json()["order_id"]] = t0
                traces.add(response.headers.get("x-trace-id", ""))
                stage.accepted += 1
            else:
                stage.refused += 1

        begin = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)


async def _until_done(
    final: FinalEvents, ids: list[str], stage: Stage, probe: Probe | None, mail_before: int
) -> None:
    """Up to 30 s after the last POST: every order final and (with a probe) emailed."""
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        if all(o in final.seen for o in ids):
            if probe is None:
                return
            stage.emails_sent = counts.mail_count(probe.maildir) - mail_before
            if stage.emails_sent >= EMAILS_PER_ORDER * len(ids):
                return
        await asyncio.sleep(0.1)


async def offer(
    api: str,
    final: FinalEvents,
    rate: float,
    seconds: float,
    label: str,
    probe: Probe | None = None,
) -> Stage:
    """Offer ``rate`` orders/s for ``seconds``, wait for them to finish, count what it cost."""
    stage = Stage(offered=rate, seconds=seconds)
    started_at: dict[str, float] = {}
    trace_ids: set[str] = set()
    cpu_before = probe.meter.read() if probe else {}
    broker_before = counts.broker_counters(BROKER_METRICS) if probe else None
    mail_before = counts.mail_count(probe.maildir) if probe else 0
    begin = time.perf_counter()
    await _post_orders(api, rate, seconds, stage, started_at, trace_ids)
    await _until_done(final, list(started_at), stage, probe, mail_before)
    stage.elapsed_s = time.perf_counter() - begin
    stage.latencies_ms = [
        (final.seen[o] - t0) * 1000 for o, t0 in started_at.items() if o in final.seen
    ]
    stage.completed = len(stage.latencies_ms)
    if probe and stage.accepted:
        cpu_after = probe.meter.read()
        broker_after = counts.broker_counters(BROKER_METRICS)
        spent = {n: cpu_after[n] - cpu_before[n] for n in cpu_after if n in cpu_before}
        stage.cpu_ms_per_order = {n: s * 1000 / stage.accepted for n, s in spent.items()}
        stage.cpu_s = sum(s for n, s in spent.items() if n != LOAD_DRIVER)
        stage.broker_per_order = counts.per_order(broker_before, broker_after, stage.accepted)
        for key in ("delivered", "acknowledged"):  # less FinalEvents' own: one per order
            if key in stage.broker_per_order:
                stage.broker_per_order[key] -= 1
        if probe.span_flush_s:
            await asyncio.sleep(probe.span_flush_s)
        stage.spans = counts.span_counts(probe.spans_file, trace_ids)
    s = stage.summary()
    cpu = sum(v for n, v in stage.cpu_ms_per_order.items() if n != LOAD_DRIVER)
    console.print(
        f"  {label} {rate:5.0f}/s: accepted {s['accepted']}, final {s['completed']},"
        f" emails {s['emails_sent']}, p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms,"
        f" CPU {cpu:.1f} ms/order"
        + (f" -> {'sustained' if stage.sustained else 'NOT sustained'}" if probe else "")
    )
    return stage


# --8<-- [start:tracing-modes]
# How each saga run traces. Exports use the SDK's default batching (every 5 s or 512 spans).
TRACING_MODES: dict[str, dict[str, str]] = {
    # As shipped: every person's order traced; of the load generator's (this benchmark's
    # orders carry its baggage), one in a hundred.
    "shipped": {"SYNTHETIC_TRACE_RATIO": "0.01"},
    "traced": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},  # every order, all its spans
    "untraced": {"OTEL_TRACES_SAMPLER": "always_off"},  # no span recorded; metrics still on
}
# --8<-- [end:tracing-modes]


async def saga(
    url: str,
    run_dir: Path,
    mode: str,
    rates: list[float],
    seconds: float,
    *,
    burst_too: bool,
    shares: tuple[float, ...] = (0.5, 0.8),
) -> dict[str, Any]:
    from shared.testing.system import build_system, mongo_standin, mongo_url_of, start_everything

    label = f"{mode}-{uuid.uuid4().hex[:4]}"
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
    try:
        start_everything(system)
        probe = Probe(
            CpuMeter(system, database),
            system.spans_file,
            system.maildir,
            span_flush_s=0.0 if mode == "untraced" else 6.0,  # the batches' 5 s, and a second
        )
        await final.start()
        # With the probe: it waits for the warm-up's emails too, which would otherwise land in
        # the first step's count and CPU.
        await offer(system.api, final, 10, 10, f"{mode} warm-up", probe)
        result = await _step_up(system, final, probe, mode, rates, seconds, shares)
        if burst_too and result["max_sustained_orders_s"]:
            rate = result["max_sustained_orders_s"] * 3
            result["burst"] = await burst(system, url, final, rate, 5, probe)
        return result
    finally:
        await final.stop()
        system.stop_all()
        database.stop()


async def _step_up(
    system: Any,
    final: FinalEvents,
    probe: Probe,
    mode: str,
    rates: list[float],
    seconds: float,
    shares: tuple[float, ...],
) -> dict[str, Any]:
    """Each rate in turn until one is not sustained; then ``shares`` of the best."""
    from shared.testing.system import seed_catalog

    result: dict[str, Any] = {"mode": mode, "stages": []}
    best = 0.0
    for rate in rates:
        seed_catalog(system)
        stage = await offer(system.api, final, rate, seconds, mode, probe)
        result["stages"].append(stage.summary())
        if not stage.sustained:
            break
        best = rate
    result["max_sustained_orders_s"] = best
    for share in shares:
        if best:
            await quiet(system.env["RABBIT_URL"])  # what the failed step left: drained first
            seed_catalog(system)
            stage = await offer(
                system.api, final, best * share, seconds, f"{mode} at {share:.0%}", probe
            )
            result[f"at_{int(share * 100)}pct"] = stage.summary()
    result["cost"] = cost_model(result["stages"])
    return result


async def quiet(url: str, timeout: float = 120.0) -> float:
    """Wait until no Warren queue holds a message (a step that was not sustained leaves a
    backlog, emails last); the seconds it took."""
    started = time.perf_counter()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        while time.perf_counter() - started < timeout:
            if not sum(ready for ready, _ in (await counts.depths(channel)).values()):
                break
            await asyncio.sleep(0.5)
    return time.perf_counter() - started


def cost_model(stages: list[dict[str, Any]]) -> dict[str, float]:
    """CPU = fixed + marginal x rate, fitted (least squares) over the sustained stages: the
    marginal ms of CPU an order adds, and the CPU the system spends idle (ms per second)."""
    points = [
        (s["accepted"] / s["elapsed_s"], s["cpu_s"] / s["elapsed_s"])
        for s in stages
        if s["sustained"] and s["elapsed_s"] > 0
    ]
    if len(points) < 3:
        return {}
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return {"marginal_ms_per_order": slope * 1000, "fixed_ms_per_s": (my - slope * mx) * 1000}


async def burst(
    system: Any, url: str, final: FinalEvents, rate: float, seconds: float, probe: Probe
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
    stage = await offer(system.api, final, rate, seconds, "burst", probe)
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


# --- plots -----------------------------------------------------------------------------------------


def plot(results: dict[str, Any], latency_png: Path, burst_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    # One colour per saga run, one marker per percentile.
    runs = (("shipped", "-", "C0"), ("traced", ":", "C1"), ("untraced", "--", "C2"))
    for key, style, colour in runs:
        stages = (results["saga"].get(key) or [{}])[0].get("stages", [])
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
                label=f"{key} {q[:3]}",
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

    first = next((runs[0] for runs in results["saga"].values() if runs), {})
    samples = first.get("burst", {}).get("queue_depths", [])
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


# --- noise, manifest ---------------------------------------------------------------------------------


def calibrate() -> float:
    """ms for a fixed pure-Python loop, best of three: this machine's speed right now."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        sum(i * i for i in range(1_000_000))
        best = min(best, (time.perf_counter() - started) * 1000)
    return best


def cpu_steal() -> float:
    """CPU seconds stolen by the hypervisor so far (0 on bare metal)."""
    import psutil

    return getattr(psutil.cpu_times(), "steal", 0.0)


async def manifest(url: str) -> dict[str, Any]:
    """Versions and the settings that decide the numbers."""
    from services.notification.settings import NotificationSettings
    from shared import topology
    from shared.settings import WarrenSettings

    packages = [
        "faststream",
        "aio-pika",
        "aiormq",
        "pymongo",
        "celery",
        "kombu",
        "fastapi",
        "uvicorn",
        "uvloop",
        "opentelemetry-sdk",
        "nx-27017",
    ]
    connection = await aio_pika.connect(url)
    async with connection:
        server = connection.transport.connection.server_properties  # type: ignore[union-attr]
        broker = server.get("version", b"?")
    queues = topology.ALL_QUEUES_WITH_DLQ
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "packages": {name: version(name) for name in packages},
        "rabbitmq": broker.decode() if isinstance(broker, bytes) else str(broker),
        "queues": {
            "quorum": sum(q.quorum for q in queues),
            "classic": sum(not q.quorum for q in queues),
        },
        "messages": "persistent, mandatory, publisher confirms, ack after the handler",
        "prefetch": WarrenSettings().prefetch,
        "celery": {"pool": "prefork", "concurrency": NotificationSettings().worker_concurrency},
        "tracing_modes": TRACING_MODES,
        "span_batching": "OTEL_BSP_SCHEDULE_DELAY=5000 (the SDK's default batch processor)",
    }


# --- report ----------------------------------------------------------------------------------------


# --8<-- [start:cpu-budget]
def cpu_budget(stage: dict[str, Any]) -> tuple[dict[str, float], float]:
    """CPU ms per order by process (the load driver apart: it is not the system), and the
    orders/s that this machine's cores could carry at that cost."""
    spent = {n: v for n, v in (stage.get("cpu_ms_per_order") or {}).items() if n != LOAD_DRIVER}
    per_order = sum(spent.values())
    cores = os.cpu_count() or 1
    return spent, (cores * 1000 / per_order if per_order else float("nan"))
    # --8<-- [end:cpu-budget]


def best_stage(result: dict[str, Any]) -> dict[str, Any] | None:
    """The stage at the highest rate the run sustained."""
    rate = result["max_sustained_orders_s"]
    return next((s for s in result["stages"] if s["offered_orders_s"] == rate), None)


def headline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode over its repeats: max sustained rate and CPU per order there (min/median/max)."""
    rates = [r["max_sustained_orders_s"] for r in runs]
    cpus = [sum(cpu_budget(s)[0].values()) for r in runs if (s := best_stage(r))]
    marginal = [r["cost"]["marginal_ms_per_order"] for r in runs if r.get("cost")]

    def spread(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "max_orders_per_s": spread(rates),
        "cpu_ms_per_order": spread(cpus),
        "marginal_ms_per_order": spread(marginal),
    }


def common_stage(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each mode's stage (first repeat) at the highest load all of them sustained: same rate."""
    runs = {m: r[0] for m, r in results["saga"].items() if r}
    rate = min((r["max_sustained_orders_s"] for r in runs.values()), default=0)
    return {
        m: stage
        for m, r in runs.items()
        for stage in r["stages"]
        if stage["offered_orders_s"] == rate
    }


def cpu_table(results: dict[str, Any]) -> Table:
    """Where the time goes: CPU per order, by process, all modes at the same offered load."""
    stages = common_stage(results)
    budgets = {m: cpu_budget(stage) for m, stage in stages.items()}
    rate = next(iter(stages.values()))["offered_orders_s"] if stages else 0
    table = Table("process", *stages, title=f"ms of CPU per order at {rate:.0f} orders/s")
    first = next(iter(budgets.values()))[0] if budgets else {}
    for name in sorted(first, key=lambda n: -first[n]):
        table.add_row(name, *(f"{b[0].get(name, float('nan')):.1f}" for b in budgets.values()))
    table.add_row(
        "all (the load driver apart)", *(f"{sum(b[0].values()):.1f}" for b in budgets.values())
    )
    table.add_row(
        f"{os.cpu_count()} cores / all", *(f"{b[1]:.0f} orders/s" for b in budgets.values())
    )
    return table


def counts_table(results: dict[str, Any]) -> Table:
    """What one order costs, counted: the broker's messages, and from the traced run's spans
    the database commands and HTTP requests."""
    stages = common_stage(results)
    table = Table("per order", *stages, title="Counted per order (same offered load)")
    for key in ("published", "confirmed", "delivered", "acknowledged"):
        table.add_row(
            f"messages {key}",
            *(f"{s['broker_per_order'].get(key, float('nan')):.1f}" for s in stages.values()),
        )
    for key, name in (
        ("traces_recorded", "traces recorded (of the stage's orders)"),
        ("spans_per_order", "spans per recorded order"),
        ("db_commands_per_order", "database commands per recorded order"),
        ("http_requests_per_order", "HTTP requests per recorded order"),
    ):
        table.add_row(name, *(f"{s['spans'].get(key, 0):.1f}" for s in stages.values()))
    traced = stages.get("traced", {}).get("spans", {}).get("db_commands_by_type", {})
    for command, n in traced.items():
        table.add_row(f"  {command}", *(f"{n:.1f}" if m == "traced" else "" for m in stages))
    return table


def report(results: dict[str, Any]) -> None:
    raw, hop, db = results["raw_broker"], results["hops"], results["database_ceiling"]
    table = Table("measure", "value", title="Warren benchmark (this machine)")
    table.add_row("raw broker publish (confirms, persistent)", f"{raw['publish_msg_s']:,.0f} msg/s")
    table.add_row("raw broker consume (acks)", f"{raw['consume_msg_s']:,.0f} msg/s")
    for name in ("raw", "faststream", "warren"):
        h = hop[name]
        table.add_row(
            f"one hop, {name}", f"{h['msg_s']:,.0f} msg/s, {h['cpu_us_per_msg']:.0f} µs CPU/msg"
        )
    table.add_row("hop: Warren / aio-pika, CPU per message", f"{hop['warren_vs_raw_cpu']:.2f}x")
    for mode, summary in results["headline"].items():
        rate, cpu = summary["max_orders_per_s"], summary["cpu_ms_per_order"]
        marginal = summary["marginal_ms_per_order"]
        table.add_row(
            f"saga, {mode}: max sustained / CPU per order there",
            f"{rate.get('median', 0):.0f} orders/s / {cpu.get('median', float('nan')):.1f} ms"
            + (f" (marginal {marginal['median']:.1f} ms)" if marginal else "")
            + (
                f"  [min {rate['min']:.0f}, max {rate['max']:.0f}]"
                if rate.get("min") != rate.get("max")
                else ""
            ),
        )
    first = results["saga"]["shipped"][0] if results["saga"].get("shipped") else {}
    for stage in first.get("stages", [])[:3]:
        table.add_row(
            f"shipped latency at {stage['offered_orders_s']:.0f} orders/s",
            f"p50 {stage['p50_ms']:.0f} / p95 {stage['p95_ms']:.0f} / p99 {stage['p99_ms']:.0f} ms",
        )
    table.add_row(
        "database stand-in ceiling (saga's mix)",
        f"{db['orders_s']:.0f} orders/s ({db['ops_s']:,.0f} ops/s, {db['ops_per_order']:.0f} ops/order)",
    )
    noise = results["noise"]
    table.add_row(
        "calibration loop, start / end",
        f"{noise['calibration_ms'][0]:.0f} / {noise['calibration_ms'][1]:.0f} ms",
    )
    table.add_row("CPU stolen by the hypervisor", f"{noise['steal_s']:.1f} s")
    console.print(table)
    console.print(cpu_table(results))
    console.print(counts_table(results))


def summary_line(results: dict[str, Any]) -> str:
    shipped = results["headline"].get("shipped", {})
    cpu = shipped.get("cpu_ms_per_order", {}).get("median", float("nan"))
    rate = shipped.get("max_orders_per_s", {}).get("median", float("nan"))
    return (
        f"summary: cpu_ms_per_order={cpu:.1f} max_orders_per_s={rate:.0f} "
        f"hop_vs_raw={results['hops']['warren_vs_raw_cpu']:.2f}"
    )


def main(
    output: Path = typer.Option(
        Path("reports/bench.json"), help="Where to write the JSON results."
    ),
    messages: int = typer.Option(20000, help="Messages for the raw broker measurement."),
    hop_messages: int = typer.Option(5000, help="Messages for each of the three hops."),
    rates: str = typer.Option(
        "5,10,20,25,30,35,40,45,50,60,70,80",
        help="Offered orders/s, stepped up until not sustained (5, 10, 20: the fixed rates).",
    ),
    stage_seconds: float = typer.Option(30.0, min=1, help="Seconds per load step."),
    modes: str = typer.Option("shipped,traced,untraced", help="Tracing modes, comma-separated."),
    repeats: int = typer.Option(1, min=1, help="Runs of every mode, interleaved (ABCABC)."),
    shares: str = typer.Option(
        "0.5,0.8", help="Shares of the max sustained rate measured again (empty: none)."
    ),
    with_burst: bool = typer.Option(
        True, "--burst/--no-burst", help="The burst, after the first mode."
    ),
    ceiling_orders: int = typer.Option(1000, help="Orders for the database ceiling."),
) -> None:
    """Measure the raw broker, one hop three ways, the saga per tracing mode, the database."""
    import uvloop

    url = os.environ.get("RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/")
    output.parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(os.environ.get("BENCH_RUN_DIR", f"/tmp/warren-bench-{uuid.uuid4().hex[:6]}"))
    steps = [float(r) for r in rates.split(",")]
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    again = tuple(float(share) for share in shares.split(",") if share.strip())
    unknown = set(chosen) - set(TRACING_MODES)
    if unknown:
        raise typer.BadParameter(f"unknown modes {sorted(unknown)}; have {sorted(TRACING_MODES)}")

    async def run() -> dict[str, Any]:
        from shared import topology
        from shared.settings import WarrenSettings
        from shared.testing.system import refuse_a_broker_in_use

        # A clean broker, no backlog from earlier runs -- but never a live system's queues.
        await refuse_a_broker_in_use(url, topology.RETRY_DELAYS_SECONDS)
        await topology.delete_queues(url)
        results: dict[str, Any] = {"manifest": await manifest(url)}
        calibration, steal = [calibrate()], cpu_steal()
        console.print("[bold]1/4[/] raw broker (aio-pika)")
        results["raw_broker"] = await raw_broker(url, messages)
        console.print("[bold]2/4[/] one hop: aio-pika, FastStream, Warren")
        results["hops"] = await hops(url, hop_messages, WarrenSettings().prefetch)
        results["saga"] = {mode: [] for mode in chosen}
        for repeat in range(repeats):
            for mode in chosen:
                console.print(f"[bold]3/4[/] saga, {mode} (run {repeat + 1} of {repeats})")
                burst_too = with_burst and mode == chosen[0] and repeat == 0
                results["saga"][mode].append(
                    await saga(
                        url, run_dir, mode, steps, stage_seconds, burst_too=burst_too, shares=again
                    )
                )
        console.print("[bold]4/4[/] database stand-in ceiling")
        results["database_ceiling"] = await database_ceiling(run_dir, ceiling_orders)
        calibration.append(calibrate())
        results["noise"] = {"calibration_ms": calibration, "steal_s": cpu_steal() - steal}
        results["headline"] = {mode: headline(runs) for mode, runs in results["saga"].items()}
        return results

    results = uvloop.run(run())  # the event loop the services run on
    output.write_text(json.dumps(results, indent=2, default=str))
    plot(results, output.with_name("bench-latency.png"), output.with_name("bench-burst.png"))
    report(results)
    console.print(
        f"wrote {output}, {output.with_name('bench-latency.png')}, {output.with_name('bench-burst.png')}"
    )
    console.print(summary_line(results))


if __name__ == "__main__":
    typer.run(main)
