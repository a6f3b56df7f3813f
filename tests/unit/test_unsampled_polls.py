"""Locust's status polls carry an unsampled parent, so the services record no span for them; and
the services' sampler, through a real HTTP request, keeps a person's order and drops the load
generator's (its baggage says ``synthetic_request=true``)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loadtests.unsampled import unsampled_traceparent
from shared.observability import default_sampler


def instrumented(monkeypatch: pytest.MonkeyPatch) -> tuple[TestClient, InMemorySpanExporter]:
    """An API traced with the services' default sampler (no OTEL_TRACES_SAMPLER), keeping no
    load-generator trace (SYNTHETIC_TRACE_RATIO=0)."""
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("SYNTHETIC_TRACE_RATIO", "0")
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=default_sampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> dict[str, str]:
        return {"order_id": order_id}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    return TestClient(app), exporter


def test_a_load_generator_request_is_not_traced_and_a_persons_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, exporter = instrumented(monkeypatch)
    with client:
        synthetic = {"baggage": "synthetic_request=true"}
        assert client.get("/orders/1", headers=synthetic).is_success
        assert exporter.get_finished_spans() == ()
        assert client.get("/orders/1").is_success
        assert exporter.get_finished_spans()


def test_a_poll_with_an_unsampled_parent_records_no_span_and_an_order_still_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, exporter = instrumented(monkeypatch)
    with client:
        assert client.get("/orders/1", headers={"traceparent": unsampled_traceparent()}).is_success
        assert exporter.get_finished_spans() == ()
        assert client.get("/orders/1").is_success  # no parent: traced as before
        assert exporter.get_finished_spans()
    header = unsampled_traceparent()
    assert header != unsampled_traceparent()  # fresh ids every poll
    assert header.startswith("00-") and header.endswith("-00") and len(header) == 55
