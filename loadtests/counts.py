"""What an order costs, counted rather than assumed: for the benchmark's stages.

* **the broker** -- messages published, confirmed, delivered and acknowledged, from RabbitMQ's
  own counters (``rabbitmq_global_messages_*_total`` on its Prometheus endpoint, 3.10 and 4.x):
  the whole node, so nothing else may use it during a run (the benchmark refuses a live system);
* **the spans** of the stage's orders (the traces their ``X-Trace-Id`` names), read from the
  system's OTLP receiver: how many, and among them the database commands by type (one PyMongo
  span per command) and the HTTP requests (server spans) -- complete only for traced orders;
* **the emails** the stage's orders got: what reached the mail sink;
* **the queues**: what waits in each (a backlog), and who consumes it.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

BROKER_COUNTERS = {
    "published": "rabbitmq_global_messages_received_total",
    "confirmed": "rabbitmq_global_messages_confirmed_total",
    "delivered": "rabbitmq_global_messages_delivered_total",
    "acknowledged": "rabbitmq_global_messages_acknowledged_total",
}
_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{[^}]*\})? (?P<value>[0-9.e+]+)$")


def broker_counters(metrics_url: str) -> dict[str, float] | None:
    """The node's message counters now; None when the endpoint does not answer (no
    rabbitmq_prometheus)."""
    try:
        return parse_broker_counters(httpx.get(metrics_url, timeout=5).text)
    except httpx.HTTPError:
        return None


def parse_broker_counters(text: str) -> dict[str, float]:
    """The counters of :data:`BROKER_COUNTERS` in a Prometheus text page, each summed over
    its labels (protocols, queue types)."""
    wanted = {name: key for key, name in BROKER_COUNTERS.items()}
    found: dict[str, float] = dict.fromkeys(BROKER_COUNTERS, 0.0)
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] in wanted:
            found[wanted[match["name"]]] += float(match["value"])
    return found


def per_order(before: dict[str, float] | None, after: dict[str, float] | None, orders: int):
    """Each counter's increase, per order."""
    if before is None or after is None or not orders:
        return {}
    return {key: (after[key] - before[key]) / orders for key in after}


def span_counts(spans_file: Path, trace_ids: set[str]) -> dict[str, Any]:
    """The spans of these traces: how many traces were recorded, spans per recorded trace,
    and per recorded trace the database commands by type and the HTTP requests."""
    if not trace_ids or not spans_file.exists():
        return {"traces_recorded": 0}
    spans: list[dict[str, Any]] = []
    with spans_file.open(encoding="utf-8") as lines:
        for line in lines:
            span = json.loads(line)
            if span.get("trace_id") in trace_ids:
                spans.append(span)
    traces = {span["trace_id"] for span in spans}
    if not traces:
        return {"traces_recorded": 0}
    commands: Counter[str] = Counter()
    http = 0
    for span in spans:
        if "pymongo" in span.get("scope", ""):
            commands[span["name"].rsplit(".", 1)[-1]] += 1
        elif span.get("kind") == "server" and span["name"].split(" ")[0] in _HTTP_METHODS:
            http += 1
    n = len(traces)
    return {
        "traces_recorded": n,
        "spans_per_order": len(spans) / n,
        "db_commands_per_order": sum(commands.values()) / n,
        "db_commands_by_type": {k: v / n for k, v in sorted(commands.items())},
        "http_requests_per_order": http / n,
    }


_HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


def mail_count(maildir: Path) -> int:
    """Emails the mail sink has received so far: one file each in its Maildir's ``new``.
    Counted there, not in notification's database: a query per poll would load the database
    whose CPU the stage is measuring."""
    try:
        return sum(1 for _ in os.scandir(maildir / "new"))
    except FileNotFoundError:
        return 0


async def depths(channel: Any) -> dict[str, tuple[int, int]]:
    """Ready messages and consumers of every Warren consumer queue (passive declares, on one
    aio-pika channel the caller keeps for its polls)."""
    from shared import topology

    found = {}
    for queue in topology.ALL_QUEUES_WITH_DLQ:
        declared = await channel.declare_queue(queue.name, passive=True)
        result = declared.declaration_result
        found[queue.name] = (result.message_count, result.consumer_count)
    return found
