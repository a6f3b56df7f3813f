"""Locust's status polls carry an unsampled parent, so the services record no span for them."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from loadtests.unsampled import unsampled_traceparent


def test_a_poll_with_an_unsampled_parent_records_no_span_and_an_order_still_does() -> None:
    # The services' sampler: OTEL_TRACES_SAMPLER=parentbased_always_on (.env).
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> dict[str, str]:
        return {"order_id": order_id}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    with TestClient(app) as client:
        assert client.get("/orders/1", headers={"traceparent": unsampled_traceparent()}).is_success
        assert exporter.get_finished_spans() == ()
        assert client.get("/orders/1").is_success  # no parent: traced as before
        assert exporter.get_finished_spans()
    header = unsampled_traceparent()
    assert header != unsampled_traceparent()  # fresh ids every poll
    assert header.startswith("00-") and header.endswith("-00") and len(header) == 55
