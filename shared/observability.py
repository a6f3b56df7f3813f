"""Logging and tracing, set up once for every process; a service passes only its name.

Tracing follows the standard ``OTEL_*`` variables: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) sends OTLP over HTTP (Jaeger accepts it on 4318);
``OTEL_TRACES_EXPORTER=console`` prints spans; with neither, spans are made (so logs carry trace
ids) but not exported. ``OTEL_SDK_DISABLED=true`` turns tracing off.

Logs are structured (structlog): one line per event with ``trace_id``, ``span_id`` and whatever
the code bound (``order_id``, ``event_id``...); JSON with ``LOG_FORMAT=json``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

_configured_for: str | None = None


ORDER_ID = "order.id"
# Load-test traffic carries the baggage synthetic_request=true (loadtests/locustfile.py).
SYNTHETIC = "synthetic_request"
# Baggage copied onto every span as attributes.
TAGGED_BAGGAGE = (ORDER_ID, SYNTHETIC)
# Direct reply-to gives every request its own reply queue name; keep it out of span names.
_REPLY_QUEUE = re.compile(r"amq\.rabbitmq\.reply-to\.\S+")


# --8<-- [start:order-span-processor]
class OrderSpanProcessor(SpanProcessor):
    """Tags every span with ``order.id`` and ``synthetic_request`` (both carried as W3C baggage
    across every hop; load tests set the latter) and keeps span names stable (no per-request
    reply-queue names)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        parent_attributes = (
            getattr(trace.get_current_span(parent_context), "attributes", None) or {}
        )
        for key in TAGGED_BAGGAGE:
            # From the baggage of the parent context or of the current one (FastStream starts
            # its consumer span from a fresh context), else from the parent span itself.
            value = (
                baggage.get_baggage(key, parent_context)
                or baggage.get_baggage(key)
                or parent_attributes.get(key)
            )
            if value:
                span.set_attribute(key, str(value))
        if "amq.rabbitmq.reply-to" in span.name:
            span.update_name(_REPLY_QUEUE.sub("(direct reply-to)", span.name))

    def on_end(self, span: ReadableSpan) -> None:
        pass
        # --8<-- [end:order-span-processor]


# --8<-- [start:order-context]
@contextmanager
def order_context(order_id: str) -> Iterator[None]:
    """Everything inside belongs to ``order_id``: the current span, the spans started inside,
    the messages published inside (baggage), and the log lines (``order_id``)."""
    trace.get_current_span().set_attribute(ORDER_ID, order_id)
    token = otel_context.attach(baggage.set_baggage(ORDER_ID, order_id))
    try:
        with structlog.contextvars.bound_contextvars(order_id=order_id):
            yield
    finally:
        otel_context.detach(token)
        # --8<-- [end:order-context]


def current_trace_context() -> dict[str, str]:
    """The active trace context and baggage as W3C headers: for a message, or to store."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _add_trace_ids(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def configure_logging(service_name: str, level: str = "INFO", fmt: str = "console") -> None:
    """Route structlog and the standard library (uvicorn, faststream, celery) through one renderer."""
    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
        lambda _, __, event_dict: {"service": service_name, **event_dict},
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            # First: a call below the level costs one check, not the whole chain (time stamp,
            # trace ids...) only for the standard library to drop the result.
            structlog.stdlib.filter_by_level,
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_processors,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pymongo", "aiormq", "aio_pika", "httpx", "amqp", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def configure_tracing(service_name: str) -> TracerProvider | None:
    """Install the global tracer provider and instrument PyMongo. Returns None when disabled."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    # The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default: parent-based,
    # always on).
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(OrderSpanProcessor())
    exporter_kind = os.environ.get("OTEL_TRACES_EXPORTER", "").lower()
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)

    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor

    PymongoInstrumentor().instrument()
    return provider


def setup_observability(service_name: str, *, level: str = "INFO", fmt: str = "console") -> None:
    """Logging and tracing for this process. Idempotent: the second call does nothing."""
    global _configured_for
    if _configured_for is not None:
        return
    configure_logging(service_name, level, fmt)
    configure_tracing(service_name)
    _configured_for = service_name


def shutdown_tracing() -> None:
    """Flush spans still buffered (call at process exit)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
