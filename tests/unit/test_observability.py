"""Logs and spans carry the order: trace ids in every log line, order.id on every span."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.observability import OrderSpanProcessor, configure_logging, order_context


@pytest.fixture
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(OrderSpanProcessor())
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
