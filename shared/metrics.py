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

A histogram sample taken inside a traced span keeps that span as an **exemplar** (the SDK's
default, trace-based filter): one per bucket, served in the OpenMetrics format Prometheus asks
for, so a slow bucket on a dashboard links to the trace of one request that fell into it.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_attribute
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar, Sample
from starlette.requests import Request
from starlette.responses import Response

from shared.periodic import every

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
    "held_back (early: its predecessor not handled yet), dead_lettered (retries exhausted), "
    "poison (unreadable, forged, no handler)",
)
ORDER_GAPS = meter.create_counter(
    "warren.order.gaps",
    unit="{event}",
    description="Events applied out of their order's sequence, by queue and kind: gap (its "
    "predecessor never came within the bound, applied without it), late (came after such a gap)",
)
# Buckets in seconds (the SDK's default boundaries, 0 5 10 25 ... 10000, are meant for
# milliseconds: every handler would fall into the first two).
FAST_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
HANDLER_DURATION = meter.create_histogram(
    "warren.handler.duration",
    unit="s",
    description="Time from a message's arrival to its outcome, by queue and event type",
    explicit_bucket_boundaries_advisory=FAST_BUCKETS,
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
    explicit_bucket_boundaries_advisory=FAST_BUCKETS,
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
        await every(self.every, self._sample, what="read the numbers to sample (metrics)")

    async def _sample(self) -> None:
        try:
            self.values = await self.read()
        except Exception:
            self.values = {}
            raise

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
        # Registers with prometheus_client's default registry: served by metrics_endpoint().
        reader = ExemplarPrometheusReader()
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


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics`` of every service: its metrics in the format the scraper asks for --
    OpenMetrics, with exemplars, for Prometheus; the classic text format for a browser."""
    from prometheus_client.exposition import choose_encoder

    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), media_type=content_type)


# --8<-- [start:exemplars]
class ExemplarPrometheusReader(PrometheusMetricReader):
    """OpenTelemetry's Prometheus reader, with exemplars.

    The reader (opentelemetry-exporter-prometheus 0.66b1) translates the SDK's histograms but
    drops the exemplars the SDK keeps on each data point. This one lets it translate into a
    registry of its own, remembers each point's exemplars as it receives them, and serves the
    families from the default registry with every bucket's latest exemplar attached.
    """

    def __init__(self) -> None:
        self.translated = CollectorRegistry(auto_describe=True)
        super().__init__(registry=self.translated)
        # (bucket sample's name, labels without the scope's, le) -> the latest exemplar
        self.exemplars: dict[tuple[str, frozenset[tuple[str, str]], str], Exemplar] = {}
        self.served = _WithExemplars(self)
        REGISTRY.register(self.served)

    def _receive_metrics(self, metrics_data: MetricsData, *args: Any, **kwargs: Any) -> None:
        for metric, point in _histogram_points(metrics_data):
            name = self._collector._resolve_metric_name(metric.name)
            bucket = Metric(name, "", "histogram", map_unit(metric.unit or "")).name + "_bucket"
            values = {
                sanitize_attribute(key): self._collector._check_value(value)
                for key, value in point.attributes.items()
            }
            labels = frozenset((key, value) for key, value in values.items() if value)
            for kept in point.exemplars:
                if kept.trace_id:
                    le = _bucket_bound(point.explicit_bounds, kept.value)
                    self.exemplars[(bucket, labels, le)] = Exemplar(
                        {"trace_id": f"{kept.trace_id:032x}", "span_id": f"{kept.span_id:016x}"},
                        kept.value,
                        kept.time_unix_nano / 1e9,
                    )
        super()._receive_metrics(metrics_data, *args, **kwargs)

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        REGISTRY.unregister(self.served)
        super().shutdown(*args, **kwargs)

    def with_exemplar(self, sample: Sample) -> Sample:
        if not sample.name.endswith("_bucket"):
            return sample
        labels = frozenset(
            (key, value)
            for key, value in sample.labels.items()
            if key != "le" and value and not key.startswith("otel_scope_")
        )
        exemplar = self.exemplars.get((sample.name, labels, sample.labels.get("le", "")))
        return sample._replace(exemplar=exemplar) if exemplar else sample


class _WithExemplars:
    """The prometheus_client collector that serves the reader's families, exemplars added."""

    def __init__(self, reader: ExemplarPrometheusReader):
        self.reader = reader

    def describe(self) -> list[Metric]:
        return []  # registering must not collect: the reader has no meter provider yet

    def collect(self) -> Iterator[Metric]:
        for family in self.reader.translated.collect():  # the SDK collects, then translates
            family.samples = [self.reader.with_exemplar(sample) for sample in family.samples]
            yield family


def _histogram_points(metrics_data: MetricsData) -> Iterator[tuple[Any, HistogramDataPoint]]:
    for resource in metrics_data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, HistogramDataPoint):
                        yield metric, point


def _bucket_bound(bounds: Sequence[float], value: float) -> str:
    """The ``le`` label of the bucket a value falls into, written as the exporter writes it."""
    index = bisect.bisect_left(bounds, value)
    return f"{bounds[index]}" if index < len(bounds) else "+Inf"
    # --8<-- [end:exemplars]
