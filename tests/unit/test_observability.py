"""Logs and spans carry the order: trace ids in every log line, order.id on every span; the
exporters are the ones the OTEL_* variables name."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.observability import (
    configure_logging,
    make_trace_exporters,
    order_context,
    span_processors,
)


@pytest.fixture
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    for processor in span_processors():
        provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_a_log_line_inside_an_order_names_its_trace_span_and_order(
    provider: tuple[TracerProvider, InMemorySpanExporter], capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("test", fmt="json")
    tracer = provider[0].get_tracer("test")
    with tracer.start_as_current_span("handle"), order_context("order-7"):
        structlog.get_logger("test").info("reserved", sku="CARROT-MUG")
        logging.getLogger("library").warning("from the standard library")
        expected_trace = format(trace.get_current_span().get_span_context().trace_id, "032x")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["reserved", "from the standard library"]
    for line in lines:
        assert line["trace_id"] == expected_trace
        assert len(line["span_id"]) == 16
        assert line["order_id"] == "order-7"
        assert line["service"] == "test"


def test_below_the_level_nothing_is_rendered(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("test", level="WARNING", fmt="json")
    rendered: list[str] = []
    real = structlog.processors.TimeStamper.__call__
    monkeypatch.setattr(
        structlog.processors.TimeStamper,
        "__call__",
        lambda self, *args: rendered.append("stamped") or real(self, *args),
    )
    log = structlog.get_logger("test.level")
    log.info("handled", event_id="e-1")  # dropped before any processor runs
    log.warning("retrying", event_id="e-2")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["retrying"]
    assert rendered == ["stamped"]  # only the warning was time-stamped


def test_spans_started_inside_an_order_are_tagged_with_it(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer, exporter = provider[0].get_tracer("test"), provider[1]
    with tracer.start_as_current_span("outer"), order_context("order-8"):
        with tracer.start_as_current_span("inner"):
            pass
        with tracer.start_as_current_span("amq.rabbitmq.reply-to.XYZ== publish"):
            pass
    tagged = {s.name: s.attributes.get("order.id") for s in exporter.get_finished_spans()}
    assert tagged == {
        "outer": "order-8",
        "inner": "order-8",
        "(direct reply-to) publish": "order-8",  # a stable name, not the per-request queue
    }


def test_baggage_from_another_process_tags_the_spans_with_the_order_and_nothing_else(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer, exporter = provider[0].get_tracer("test"), provider[1]
    incoming = propagate.extract(
        {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "baggage": "order.id=order-9,synthetic_request=true,customer=daffy-duck",
        },
        context=Context(),
    )
    with tracer.start_as_current_span("handle", context=incoming):
        pass
    [span] = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {"order.id": "order-9", "synthetic_request": "true"}


def test_a_span_whose_context_lost_the_baggage_takes_the_tags_of_its_parent(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """FastStream publishes a reply under its consumer span, after the baggage is gone."""
    tracer, exporter = provider[0].get_tracer("test"), provider[1]
    with tracer.start_as_current_span("quotes process", context=Context()) as consumer:
        consumer.set_attribute("order.id", "order-10")
    reply_context = trace.set_span_in_context(consumer, Context())  # no baggage in it
    assert baggage.get_all(reply_context) == {}
    tracer.start_span("amq.rabbitmq.reply-to.AbC== publish", context=reply_context).end()
    reply = next(s for s in exporter.get_finished_spans() if s.name.endswith("publish"))
    assert reply.name == "(direct reply-to) publish"
    assert (reply.attributes or {}).get("order.id") == "order-10"


# --- exporters: OTEL_TRACES_EXPORTER and the OTLP protocol -------------------------------

OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean slate: none of the variables that choose an exporter is set."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def chosen() -> Iterator[list[SpanExporter]]:
    """The exporters a test made, shut down after it (the gRPC one holds a channel)."""
    made: list[SpanExporter] = []
    yield made
    for exporter in made:
        exporter.shutdown()


def exporters(chosen: list[SpanExporter]) -> list[type]:
    chosen.extend(make_trace_exporters())
    return [type(exporter) for exporter in chosen]


def test_with_nothing_set_nothing_is_exported(
    environment: pytest.MonkeyPatch, chosen: list[SpanExporter]
) -> None:
    assert exporters(chosen) == []


def test_an_endpoint_alone_means_otlp_over_http(
    environment: pytest.MonkeyPatch, chosen: list[SpanExporter]
) -> None:
    environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert exporters(chosen) == [HttpSpanExporter]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_otlp_speaks_the_protocol_the_environment_names(
    environment: pytest.MonkeyPatch, chosen: list[SpanExporter], protocol: str
) -> None:
    environment.setenv("OTEL_TRACES_EXPORTER", "otlp")
    environment.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    expected = {"http/protobuf": HttpSpanExporter, "grpc": GrpcSpanExporter}[protocol]
    assert exporters(chosen) == [expected]


def test_the_traces_protocol_wins_over_the_general_one(
    environment: pytest.MonkeyPatch, chosen: list[SpanExporter]
) -> None:
    environment.setenv("OTEL_TRACES_EXPORTER", "otlp")
    environment.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    environment.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert exporters(chosen) == [GrpcSpanExporter]


def test_console_prints_spans(environment: pytest.MonkeyPatch, chosen: list[SpanExporter]) -> None:
    environment.setenv("OTEL_TRACES_EXPORTER", "console")
    assert exporters(chosen) == [ConsoleSpanExporter]


def test_none_exports_nothing_even_with_an_endpoint(
    environment: pytest.MonkeyPatch, chosen: list[SpanExporter]
) -> None:
    environment.setenv("OTEL_TRACES_EXPORTER", "none")
    environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert exporters(chosen) == []


def test_a_list_makes_one_exporter_each_in_order(
    environment: pytest.MonkeyPatch, chosen: list[SpanExporter]
) -> None:
    environment.setenv("OTEL_TRACES_EXPORTER", " console , otlp ")
    environment.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert exporters(chosen) == [ConsoleSpanExporter, GrpcSpanExporter]


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "no trace exporter 'zipkin'"),
        ("OTEL_TRACES_EXPORTER", "console,none", "'none' cannot be combined"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTLP protocol 'http/json'"),
    ],
)
def test_a_setting_warren_cannot_honour_stops_the_start(
    environment: pytest.MonkeyPatch, variable: str, value: str, complaint: str
) -> None:
    environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    environment.setenv(variable, value)
    with pytest.raises(ValueError, match=complaint):
        make_trace_exporters()
