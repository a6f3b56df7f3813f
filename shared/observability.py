"""Logging and tracing, set up once for every process; a service passes only its name.

Tracing follows the OpenTelemetry environment variables:

* ``OTEL_TRACES_EXPORTER``: a comma-separated list of ``otlp``, ``console`` or any other
  installed ``opentelemetry_traces_exporter`` entry point; ``none`` exports nothing.
* ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf``
  (the default, what Jaeger and ``warren traces collect`` take on 4318) or ``grpc`` (4317).
  The exporters read their own ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout).
* ``OTEL_PROPAGATORS`` (default ``tracecontext,baggage``): the headers that carry the context
  on every hop -- HTTP, Celery, the outbox, and RabbitMQ messages too (``shared.messaging``).
* ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER`` (``_ARG``), ``OTEL_BSP_*``: read by the SDK.
  With ``OTEL_TRACES_SAMPLER`` unset, Warren's own sampler (:func:`default_sampler`): every
  trace, except load-generator traffic (baggage ``synthetic_request=true``), of which one trace
  in ``SYNTHETIC_TRACE_RATIO`` (0.01) is kept.
* ``OTEL_SDK_DISABLED=true`` turns tracing off.

One deliberate deviation from the specification: with ``OTEL_TRACES_EXPORTER`` unset, Warren
exports over OTLP only when an endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); the specification's default, ``otlp``, would have
every test, CLI run and script without a collector log connection errors to localhost:4318.
Without an exporter, spans are still made (log lines carry trace ids) but go nowhere.

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
from importlib.metadata import entry_points
from typing import Any

import structlog
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.processor.baggage import BaggageSpanProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from shared.metrics import configure_metrics

_configured_for: str | None = None


ORDER_ID = "order.id"
# Load-test traffic carries the baggage synthetic_request=true (loadtests/locustfile.py).
SYNTHETIC = "synthetic_request"
# Baggage copied onto every span as attributes.
TAGGED_BAGGAGE = (ORDER_ID, SYNTHETIC)
# Direct reply-to gives every request its own reply queue name; keep it out of span names.
_REPLY_QUEUE = re.compile(r"amq\.rabbitmq\.reply-to\.\S+")


# --8<-- [start:order-span-processor]
def is_tagged_baggage(key: str) -> bool:
    """The baggage that ``BaggageSpanProcessor`` copies onto every span as an attribute."""
    return key in TAGGED_BAGGAGE


class OrderSpanProcessor(SpanProcessor):
    """What ``BaggageSpanProcessor`` cannot do: keep span names stable (no per-request
    reply-queue names), and tag a span whose parent context carries no baggage.

    FastStream publishes a reply after its consumer scope has ended, under the consumer span
    but outside the context that held the baggage: such a span inherits the parent's tags.
    """

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if "amq.rabbitmq.reply-to" in span.name:
            span.update_name(_REPLY_QUEUE.sub("(direct reply-to)", span.name))
        parent_attributes = (
            getattr(trace.get_current_span(parent_context), "attributes", None) or {}
        )
        for key in TAGGED_BAGGAGE:
            if key in parent_attributes and not baggage.get_baggage(key, parent_context):
                span.set_attribute(key, parent_attributes[key])

    def on_end(self, span: ReadableSpan) -> None:
        pass


def span_processors() -> list[SpanProcessor]:
    """The processors every span goes through before it is exported."""
    return [BaggageSpanProcessor(is_tagged_baggage), OrderSpanProcessor()]
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
    """The active trace context and baggage as headers, in the format ``OTEL_PROPAGATORS``
    names (W3C by default): for a message, or to store."""
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


# The OTLP exporter entry point for each value of OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL.
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_EXPORTERS = "opentelemetry_traces_exporter"


def _exporter_names() -> list[str]:
    """The ``opentelemetry_traces_exporter`` entry points the environment asks for, in order.

    ``OTEL_TRACES_EXPORTER`` is read as the specification says, but for its default (see the
    module docstring); ``otlp`` becomes the exporter of the configured OTLP protocol.
    """
    value = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not value:
        value = "otlp" if any(os.environ.get(name) for name in _OTLP_ENDPOINTS) else "none"
    names = [name.strip() for name in value.split(",") if name.strip()]
    if names == ["none"]:
        return []
    if "none" in names:
        raise ValueError(f"OTEL_TRACES_EXPORTER={value!r}: 'none' cannot be combined")
    return [_otlp_exporter_name() if name == "otlp" else name for name in names]


def exports_traces() -> bool:
    """Whether the environment asks for spans to be exported anywhere."""
    return bool(_exporter_names())


def _otlp_exporter_name() -> str:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"  # the specification's default (the SDK's own helper says grpc)
    ).strip()
    if protocol not in _OTLP_BY_PROTOCOL:
        raise ValueError(f"OTLP protocol {protocol!r}: use one of {sorted(_OTLP_BY_PROTOCOL)}")
    return _OTLP_BY_PROTOCOL[protocol]


def make_trace_exporters() -> list[SpanExporter]:
    """One exporter per name the environment asks for, loaded from its entry point.

    Each is built without arguments, so it configures itself from its own ``OTEL_EXPORTER_*``
    variables (endpoint, headers, timeout, compression...), as the SDK would build it.
    """
    exporters: list[SpanExporter] = []
    for name in _exporter_names():
        found = entry_points(group=_EXPORTERS, name=name)
        if not found:
            installed = sorted(entry.name for entry in entry_points(group=_EXPORTERS))
            raise ValueError(f"no trace exporter {name!r} is installed; have {installed}")
        exporters.append(next(iter(found)).load()())
    return exporters


# --8<-- [start:sampler]
class SyntheticTrafficSampler(Sampler):
    """Decides for a trace's first span: every trace is recorded, except load-generator
    traffic -- a request whose baggage says ``synthetic_request=true`` (Locust's, the
    benchmark's) -- of which one in ``1 / ratio`` is. A load run then does not pay for tracing
    every order, and a person's order, a demo's, a test's, is always traced."""

    def __init__(self, ratio: float) -> None:
        self._synthetic = TraceIdRatioBased(ratio)

    def should_sample(self, parent_context: Context | None, *args: Any, **kwargs: Any) -> Any:
        if baggage.get_baggage(SYNTHETIC, parent_context) == "true":
            return self._synthetic.should_sample(parent_context, *args, **kwargs)
        return ALWAYS_ON.should_sample(parent_context, *args, **kwargs)

    def get_description(self) -> str:
        return f"SyntheticTrafficSampler{{{self._synthetic.get_description()}}}"


def default_sampler() -> Sampler | None:
    """Parent-based (a span follows its trace's decision), a new trace decided by
    :class:`SyntheticTrafficSampler`; None when ``OTEL_TRACES_SAMPLER`` chooses instead."""
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None  # the SDK reads it (and OTEL_TRACES_SAMPLER_ARG)
    ratio = float(os.environ.get("SYNTHETIC_TRACE_RATIO", "0.01"))
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"SYNTHETIC_TRACE_RATIO must be between 0 and 1, not {ratio}")
    return ParentBased(root=SyntheticTrafficSampler(ratio))
    # --8<-- [end:sampler]


def configure_tracing(service_name: str) -> TracerProvider | None:
    """Install the global tracer provider and instrument PyMongo. Returns None when disabled.

    The exporters are chosen first, so that a misspelt setting stops the process at start-up.
    The propagators need nothing here: ``opentelemetry.propagate`` reads ``OTEL_PROPAGATORS``.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = make_trace_exporters()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource, sampler=default_sampler())
    for processor in span_processors():
        provider.add_span_processor(processor)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor

    PymongoInstrumentor().instrument()
    return provider


def setup_observability(service_name: str, *, level: str = "INFO", fmt: str = "console") -> None:
    """Logging, tracing and metrics for this process. Idempotent: the second call does nothing."""
    global _configured_for
    if _configured_for is not None:
        return
    configure_logging(service_name, level, fmt)
    configure_tracing(service_name)
    configure_metrics(service_name)
    _configured_for = service_name


def shutdown_tracing() -> None:
    """Flush spans still buffered (call at process exit)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
