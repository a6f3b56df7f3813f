"""Throughput and latency of the labs' work queue on each broker that runs on this machine.

For each broker, with the labs' own workers (labs/<broker>/):
  throughput  N jobs published at once, handled by two competing workers, each job
              acknowledged one by one (basic.ack, XACK, DeleteMessage, an offset commit):
              jobs per second from the first publish to the last handled job.
  latency     M jobs published at a steady RATE per second: from the job's creation, just
              before its publish, to the start of its handler; median and 99th percentile.
Redis Pub/Sub has no acknowledgement and no competing consumers: its row is one subscriber,
and it counts what arrived. Kafka is measured only where KAFKA_BOOTSTRAP answers.

moto is an emulator: its row measures moto's Python server on this machine and says nothing
about Amazon SQS, whose every call crosses a network to a distributed service.

Writes reports/labs-compare.json and labs/compare-results.md (docs/16-other-brokers.md
includes the table). Run: make labs-compare, or .venv/bin/python -m labs.compare [--quick]
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labs.common import (
    KAFKA_BOOTSTRAP,
    LABS_RABBIT_URL,
    REDIS_URL,
    ChargeCard,
    Say,
    Tally,
    lab_parser,
    percentile,
)
from labs.compare_targets import Target, targets
from labs.rabbitmq import check_vhost
from labs.sqs.moto_server import sqs_endpoint

REPO = Path(__file__).resolve().parents[1]
# moto serves one request at a time in Python: a few dozen per second, so fewer jobs for it.
FULL = {"messages": 3000, "moto_messages": 500, "latency_messages": 300, "rate": 50}
QUICK = {"messages": 300, "moto_messages": 100, "latency_messages": 100, "rate": 50}
IN_FLIGHT = 50  # publishes awaited together (Redis's connection pool caps them)


@dataclass
class Row:
    broker: str
    how: str  # what one job costs on this broker, as the labs configure it
    messages: int  # jobs in the throughput run
    delivered: int
    throughput: float  # jobs per second
    latency_median_ms: float
    latency_p99_ms: float
    latency_messages: int
    rate: int


async def settle(tally: Tally, expected: int, patience: float = 3.0, limit: float = 120) -> None:
    """Until `expected` arrived, or nothing more arrived for `patience` s (Pub/Sub drops)."""
    start = last_change = time.monotonic()
    seen = -1
    while tally.total() < expected and time.monotonic() - start < limit:
        if tally.total() != seen:
            seen, last_change = tally.total(), time.monotonic()
        elif time.monotonic() - last_change > patience:
            return
        await asyncio.sleep(0.01)


async def throughput(target: Target, count: int) -> tuple[float, int]:
    await target.start()
    try:
        started = time.monotonic()
        for first in range(0, count, IN_FLIGHT):
            batch = range(first, min(first + IN_FLIGHT, count))
            await asyncio.gather(*(target.publish(ChargeCard(order_id=i)) for i in batch))
        await settle(target.tally, count)
        return count / (time.monotonic() - started), target.tally.total()
    finally:
        await target.stop()


async def latency(target: Target, count: int, rate: int) -> list[float]:
    await target.start()
    try:
        started = time.monotonic()
        for i in range(count):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            await target.publish(ChargeCard(order_id=i))
        await settle(target.tally, count)
        return [delay * 1000 for delay in target.tally.delays]
    finally:
        await target.stop()


async def measure(
    name: str, make: Callable[[], Target | None], settings: dict[str, int], say: Say = print
) -> Row | None:
    if (target := make()) is None:
        say(f"   {name}: not reachable here, skipped")
        return None
    rate, m = settings["rate"], settings["latency_messages"]
    n = settings["moto_messages" if "moto" in name else "messages"]
    say(f"   {name}: {n} jobs through two workers ...")
    per_second, delivered = await throughput(target, n)
    say(f"   {name}: {per_second:,.0f} jobs/s; latency, {m} jobs at {rate}/s ...")
    delays = await latency(make(), m, rate)  # type: ignore[arg-type]
    median, p99 = percentile(delays, 50), percentile(delays, 99)
    say(f"   {name}: median {median:.1f} ms, p99 {p99:.1f} ms")
    return Row(name, target.how, n, delivered, per_second, median, p99, len(delays), rate)


def markdown(rows: list[Row], report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"Measured {report['date']} on the development machine ({report['machine']}), "
        f"`{report['mode']}` run: throughput over {settings['messages']} jobs "
        f"({settings['moto_messages']} on moto), latency over {settings['latency_messages']} "
        f"jobs at {settings['rate']}/s; load average {report['load_before']:.1f} before, "
        f"{report['load_after']:.1f} after.",
        "",
        "| broker | one job, as the labs do it | throughput (jobs/s) | latency median (ms) "
        "| latency p99 (ms) | delivered |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.broker} | {row.how} | {row.throughput:,.0f} | {row.latency_median_ms:.1f} "
            f"| {row.latency_p99_ms:.1f} | {row.delivered} / {row.messages} |"
        )
    if not any(row.broker == "Kafka" for row in rows):
        lines += ["", "Kafka: no broker answered here, so no row (run it where one does)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--quick", action="store_true", help="fewer jobs (a few seconds each)")
    parser.add_argument("--output", type=Path, default=REPO / "reports/labs-compare.json")
    parser.add_argument("--table", type=Path, default=REPO / "labs/compare-results.md")
    args = parser.parse_args()
    settings, mode = (QUICK, "--quick") if args.quick else (FULL, "full")
    print(f"== labs compare ({mode}): Redis {REDIS_URL}, RabbitMQ {LABS_RABBIT_URL}, "
          f"SQS on moto, Kafka {KAFKA_BOOTSTRAP}")  # fmt: skip
    asyncio.run(check_vhost(LABS_RABBIT_URL))
    load_before, rows = os.getloadavg()[0], []
    with sqs_endpoint() as endpoint:
        for name, make in targets(endpoint).items():
            print(f"== {name}")
            if row := asyncio.run(measure(name, make, settings)):
                rows.append(row)
    report = {
        "mode": mode,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "settings": settings,
        "rows": [asdict(row) for row in rows],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.table.write_text(markdown(rows, report))
    print(f"== wrote {args.output} and {args.table}")
    print(markdown(rows, report))


if __name__ == "__main__":
    main()
