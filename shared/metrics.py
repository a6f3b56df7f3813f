"""Metrics: what Warren counts and measures, as OpenTelemetry instruments, scraped by Prometheus.

The libraries measure what they can see: FastStream's telemetry middleware the messages each
consumer processed and published (``messaging_process_duration_seconds``...), the FastAPI
instrumentation the HTTP requests. This module adds what only Warren knows -- how each message
*ended* (handled, retried, dead-lettered, poison), how long a saga took and how it ended, the
outbox's backlog, the quote's latency, the emails sent.

Labels are few and bounded: a queue, an event type, an outcome, a reason from a fixed list.
Never an order id: each value of a label is a series of its own, kept for weeks.

The exporter follows the OpenTelemetry variable ``OTEL_METRICS_EXPORTER``: ``prometheus`` (the
default) serves them on the service's own HTTP port at ``/metrics``; ``otlp`` pushes them to
the collector (OTEL_EXPORTER_OTLP_ENDPOINT); ``none`` turns them off.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable

import structlog
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from starlette.requests import Request
from starlette.responses import Response

log = structlog.get_logger(__name__)

ObservableCallback = Callable[[CallbackOptions], Iterable[Observation]]

# Instruments made before the provider is installed forward to it once it is (OpenTelemetry's
# proxy meter): modules create theirs at import, as they create their loggers.
meter = metrics.get_meter("warren")

# --8<-- [start:instruments]
MESSAGES = meter.create_counter(
    "warren.messages",
    unit="{message}",
    description="Messages a consumer is done with, by queue, event type and outcome: handled, "
    "duplicate (done before), retried, pushed_back (an emitted event refused by a full queue), "
    "dead_lettered (retries exhausted), poison (unreadable, forged, no handler)",
)
HANDLER_DURATION = meter.create_histogram(
    "warren.handler.duration",
    unit="s",
    description="Time from a message's arrival to its outcome, by queue and event type",
)
SAGA_DURATION = meter.create_histogram(
    "warren.saga.duration",
    unit="s",
    description="Time from order.placed to the order's final state, by final state",
    explicit_bucket_boundaries_advisory=[0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800],
)
ORDERS_FINISHED = meter.create_counter(
    "warren.orders.finished",
    unit="{order}",
    description="Orders that reached their final state, by state and reason "
    "(CONFIRMED: none; CANCELLED: out_of_stock, payment_failed, deadline, other)",
)
RPC_DURATION = meter.create_histogram(
    "warren.rpc.duration",
    unit="s",
    description="Request-reply calls (the quote), by queue and outcome: ok, timeout, full, "
    "unroutable, unavailable",
)
# --8<-- [end:instruments]


# --8<-- [start:sampled]
class Sampled:
    """Numbers read from the database every few seconds in the background (a scrape never
    waits for a query), and served to Prometheus as gauges or counters."""

    def __init__(self, read: Callable[[], Awaitable[dict[str, float]]], every: float = 5.0):
        self.read, self.every = read, every
        self.values: dict[str, float] = {}

    async def run(self) -> None:
        """The sampling loop (a service's background loop). While a read fails (the database
        is away) the numbers are withheld -- a stale gauge would say all is well -- and the
        failure is logged once, and again when it ends."""
        failing = False
        while True:
            try:
                self.values = await self.read()
            except Exception as exc:
                self.values = {}
                if not failing:
                    log.warning("metrics: cannot read the numbers to sample", error=repr(exc))
                failing = True
            else:
                if failing:
                    log.info("metrics: sampling again")
                failing = False
            await asyncio.sleep(self.every)

    def observe(self, key: str, labels: dict[str, str]) -> ObservableCallback:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            value = self.values.get(key)
            return [] if value is None else [Observation(value, labels)]

        return callback
        # --8<-- [end:sampled]


def outbox_gauges(service: str, sampled: Sampled) -> None:
    """The outbox's backlog: pending events, parked events, the age of the oldest pending one
    (sampled from :func:`shared.outbox.outbox_stats`)."""
    labels = {"service": service}
    meter.create_observable_gauge(
        "warren.outbox.pending",
        [sampled.observe("pending", labels)],
        unit="{event}",
        description="Events saved but not yet confirmed by the broker",
    )
    meter.create_observable_gauge(
        "warren.outbox.parked",
        [sampled.observe("parked", labels)],
        unit="{event}",
        description="Events the broker refused too often: waiting for an operator",
    )
    meter.create_observable_gauge(
        "warren.outbox.oldest_pending_age",
        [sampled.observe("oldest_pending_seconds", labels)],
        unit="s",
        description="How long the oldest pending event has waited",
    )


def email_counters(sampled: Sampled) -> None:
    """Emails sent and failed for good, and queued (waiting for a worker), from the
    notifications' states. Counted where they are recorded: the Celery workers are processes
    of their own (a fork each), which no scrape reaches."""
    meter.create_observable_counter(
        "warren.emails",
        [sampled.observe(state, {"outcome": state}) for state in ("sent", "failed")],
        unit="{email}",
        description="Emails handed to SMTP (sent) or given up on (failed)",
    )
    meter.create_observable_gauge(
        "warren.emails.queued",
        [sampled.observe("queued", {})],
        unit="{email}",
        description="Emails recorded and not yet sent",
    )


# --8<-- [start:configure-metrics]
def configure_metrics(service_name: str) -> MeterProvider | None:
    """Install the global meter provider with the exporter ``OTEL_METRICS_EXPORTER`` names."""
    choice = os.environ.get("OTEL_METRICS_EXPORTER", "prometheus").strip().lower()
    if choice == "none" or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    reader: MetricReader
    if choice == "prometheus":
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        # Registers with prometheus_client's default registry: served by metrics_response().
        reader = PrometheusMetricReader()
    elif choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    else:
        raise ValueError(f"OTEL_METRICS_EXPORTER={choice!r}: use prometheus, otlp or none")
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(provider)
    return provider
    # --8<-- [end:configure-metrics]


async def metrics_endpoint(_: Request) -> Response:
    """``GET /metrics`` of every service: its metrics in Prometheus' text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
