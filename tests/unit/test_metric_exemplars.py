"""Exemplars on /metrics: a histogram sample taken inside a traced span names that span's trace
on the bucket it fell into, in the OpenMetrics format Prometheus asks for; the classic text
format (a browser, curl) stays as it was."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.routing import Route

from shared.metrics import ExemplarPrometheusReader, _bucket_bound, metrics_endpoint

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture
def meter_and_tracer() -> Iterator[tuple]:
    reader = ExemplarPrometheusReader()
    provider = MeterProvider(metric_readers=[reader])  # the SDK's default filter: trace-based
    tracer = TracerProvider().get_tracer("test")
    yield provider.get_meter("test"), tracer
    provider.shutdown()


async def scrape(accept: str) -> str:
    app = Starlette(routes=[Route("/metrics", metrics_endpoint)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://x") as client:
        return (await client.get("/metrics", headers={"accept": accept})).text


async def test_a_bucket_names_the_trace_its_sample_was_taken_in(meter_and_tracer: tuple) -> None:
    meter, tracer = meter_and_tracer
    took = meter.create_histogram(
        "test.took", unit="s", explicit_bucket_boundaries_advisory=[0.1, 1, 10]
    )
    with tracer.start_as_current_span("slow order") as span:
        took.record(2.5, {"state": "CONFIRMED"})
        trace_id = f"{span.get_span_context().trace_id:032x}"
    took.record(0.05, {"state": "CONFIRMED"})  # outside any span: no exemplar

    lines = [
        line
        for line in (await scrape(OPENMETRICS)).splitlines()
        if "test_took_seconds_bucket" in line
    ]
    with_exemplar = [line for line in lines if " # {" in line]
    assert len(with_exemplar) == 1, lines
    assert 'le="10"' in with_exemplar[0]
    assert f'trace_id="{trace_id}"' in with_exemplar[0]
    assert with_exemplar[0].split(" # ")[1].split("} ")[1].startswith("2.5 ")


async def test_the_classic_text_format_has_no_exemplars(meter_and_tracer: tuple) -> None:
    meter, tracer = meter_and_tracer
    took = meter.create_histogram("test.classic", unit="s")
    with tracer.start_as_current_span("request"):
        took.record(0.2)
    text = await scrape("text/plain")
    assert "test_classic_seconds_bucket" in text
    assert "trace_id" not in text


def test_a_value_falls_into_the_bucket_prometheus_counts_it_in() -> None:
    bounds = [0.1, 1.0, 10.0]
    assert _bucket_bound(bounds, 0.1) == "0.1"  # le: less than or equal
    assert _bucket_bound(bounds, 0.11) == "1.0"
    assert _bucket_bound(bounds, 11) == "+Inf"


def test_a_shut_down_reader_leaves_the_registry(meter_and_tracer: tuple) -> None:
    before = len(list(REGISTRY._collector_to_names))
    reader = ExemplarPrometheusReader()
    MeterProvider(metric_readers=[reader]).shutdown()
    assert len(list(REGISTRY._collector_to_names)) == before
