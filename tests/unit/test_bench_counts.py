"""The benchmark's arithmetic (loadtests/bench.py, loadtests/counts.py), without running it:
counters read from RabbitMQ's page, spans counted by trace, the cost model, the summary line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from loadtests import bench, counts

PAGE = """\
# TYPE rabbitmq_global_messages_received_total counter
rabbitmq_global_messages_received_total{protocol="amqp091"} 120
rabbitmq_global_messages_confirmed_total{protocol="amqp091"} 118
rabbitmq_global_messages_delivered_total{protocol="amqp091",queue_type="rabbit_classic_queue"} 10
rabbitmq_global_messages_delivered_total{protocol="amqp091",queue_type="rabbit_quorum_queue"} 200
rabbitmq_global_messages_acknowledged_total{protocol="amqp091",queue_type="rabbit_quorum_queue"} 205
rabbitmq_global_messages_delivered_consume_manual_ack_total{protocol="amqp091"} 999
"""


def test_broker_counters_are_summed_over_queue_types_and_taken_per_order() -> None:
    before = counts.parse_broker_counters(PAGE)
    assert before == {"published": 120, "confirmed": 118, "delivered": 210, "acknowledged": 205}
    after = {key: value + 30 for key, value in before.items()}
    assert counts.per_order(before, after, 10) == dict.fromkeys(before, 3.0)
    assert counts.per_order(None, after, 10) == {}


def test_spans_are_counted_for_the_stage_traces_only(tmp_path: Path) -> None:
    def span(trace: str, name: str, scope: str, kind: str = "client") -> str:
        return json.dumps({"trace_id": trace, "name": name, "scope": scope, "kind": kind})

    lines = [
        span("a" * 32, "POST /orders", "opentelemetry.instrumentation.fastapi", "server"),
        span("a" * 32, "warren_order.insert", "opentelemetry.instrumentation.pymongo"),
        span("a" * 32, "warren_order.find", "opentelemetry.instrumentation.pymongo"),
        span("b" * 32, "warren_order.find", "opentelemetry.instrumentation.pymongo"),
        span("c" * 32, "warren_order.find", "opentelemetry.instrumentation.pymongo"),  # not ours
    ]
    spans = tmp_path / "spans.jsonl"
    spans.write_text("\n".join(lines) + "\n")
    found = counts.span_counts(spans, {"a" * 32, "b" * 32, "d" * 32})
    assert found["traces_recorded"] == 2  # d was not recorded (sampled out)
    assert found["spans_per_order"] == 2.0
    assert found["db_commands_by_type"] == {"find": 1.0, "insert": 0.5}
    assert found["http_requests_per_order"] == 0.5
    assert counts.span_counts(spans, set()) == {"traces_recorded": 0}


def stage(rate: float, cpu_ms_per_s: float, sustained: bool = True) -> dict:
    return {
        "accepted": rate * 10,
        "elapsed_s": 10,
        "cpu_s": cpu_ms_per_s * 10 / 1000,
        "sustained": sustained,
    }


def test_the_cost_model_separates_the_marginal_cost_from_the_fixed_one() -> None:
    # 20 ms of CPU per second idle, 30 ms per order: exactly on the line.
    stages = [stage(r, 20 + 30 * r) for r in (5, 10, 20)] + [stage(40, 5000, sustained=False)]
    model = bench.cost_model(stages)
    assert model["marginal_ms_per_order"] == pytest.approx(30)
    assert model["fixed_ms_per_s"] == pytest.approx(20)
    assert bench.cost_model(stages[:2]) == {}  # two points make no fit worth printing


def test_the_summary_line_is_the_shipped_median() -> None:
    results = {
        "headline": {
            "shipped": {"cpu_ms_per_order": {"median": 41.26}, "max_orders_per_s": {"median": 35.0}}
        },
        "hops": {"warren_vs_raw_cpu": 1.734},
    }
    assert bench.summary_line(results) == (
        "summary: cpu_ms_per_order=41.3 max_orders_per_s=35 hop_vs_raw=1.73"
    )


def test_the_load_driver_is_not_counted_as_the_system() -> None:
    spent, _ = bench.cpu_budget({"cpu_ms_per_order": {"order": 10.0, bench.LOAD_DRIVER: 5.0}})
    assert spent == {"order": 10.0}


def test_an_unknown_mode_stops_before_anything_starts() -> None:
    app = typer.Typer(add_completion=False)
    app.command()(bench.main)
    result = CliRunner().invoke(app, ["--modes", "shipped,fast"])
    assert result.exit_code != 0
    assert "unknown modes ['fast']" in result.output
