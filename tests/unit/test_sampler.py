"""Warren's default sampler: every trace, except the load generator's (baggage
``synthetic_request=true``), of which one in ``1 / SYNTHETIC_TRACE_RATIO`` is kept; a span
follows its trace's decision; ``OTEL_TRACES_SAMPLER`` replaces it."""

from __future__ import annotations

import pytest
from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.observability import SYNTHETIC, default_sampler


def recorded(ratio: str, monkeypatch: pytest.MonkeyPatch, *, synthetic: bool, traces: int = 200):
    """Start ``traces`` root spans (each with a child), as the order API would for requests
    with or without the synthetic baggage; the spans recorded."""
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("SYNTHETIC_TRACE_RATIO", ratio)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=default_sampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    context = baggage.set_baggage(SYNTHETIC, "true", Context()) if synthetic else Context()
    for _ in range(traces):
        with (
            tracer.start_as_current_span("POST /orders", context=context),
            tracer.start_as_current_span("warren_order.insert"),
        ):
            pass
    return exporter.get_finished_spans()


def test_a_persons_order_is_always_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(recorded("0", monkeypatch, synthetic=False)) == 400  # every root and child


def test_load_generator_traffic_is_sampled_whole_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    assert recorded("0", monkeypatch, synthetic=True) == ()
    kept = recorded("0.25", monkeypatch, synthetic=True, traces=2000)
    traces = {span.context.trace_id for span in kept}
    assert 350 < len(traces) < 650  # about a quarter of 2000
    assert len(kept) == 2 * len(traces)  # a kept trace keeps its child: parent-based


def test_otel_traces_sampler_replaces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert default_sampler() is None  # the SDK reads the variable itself


def test_a_ratio_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("SYNTHETIC_TRACE_RATIO", "5")
    with pytest.raises(ValueError, match="SYNTHETIC_TRACE_RATIO must be between 0 and 1"):
        default_sampler()
