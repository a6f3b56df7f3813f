"""A real alert, on a real Prometheus: stop the payment consumers while orders come in, and
WarrenQueueWithoutConsumers fires for payment.stock-reserved (and WarrenBacklogGrowing's
series grow); start them again, and it resolves -- and every order placed meanwhile ends.

Prometheus (Debian's) scrapes this test system's services and the broker's metrics endpoint
every second, with infra/prometheus/alerts.yml's rules as they are, except their `for:`
durations, cut to a few seconds (promtool's tests cover the durations: tests/unit; the
Prometheus: shared/testing/prometheus.py)."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from shared.testing.prometheus import answers, running_prometheus
from shared.testing.system import System
from tests.support.metrics import BROKER_METRICS, EXPECTED
from tests.support.orders import final_order, order_body
from tests.support.polling import eventually

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prometheus(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: apt-get install prometheus (.ci/run installs it)")
    if not answers(BROKER_METRICS):
        pytest.fail(f"no RabbitMQ metrics on {BROKER_METRICS}: rabbitmq_prometheus is off")
    with running_prometheus(system, BROKER_METRICS, tmp_path_factory.mktemp("prometheus")) as url:
        yield url


def vhost_of(system: System) -> str:
    return unquote(urlsplit(system.env["RABBIT_URL"]).path[1:]) or "/"


async def firing(prometheus: str, alert: str, **labels: str) -> list[dict[str, Any]]:
    """The alerts named ``alert`` with these labels that are firing now."""
    async with httpx.AsyncClient() as client:
        answer = (await client.get(f"{prometheus}/api/v1/alerts")).json()
    return [
        a
        for a in answer["data"]["alerts"]
        if a["labels"]["alertname"] == alert
        and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


async def test_stopped_payment_consumers_fire_the_alert_and_it_resolves_when_they_return(
    system: System, api: httpx.AsyncClient, prometheus: str
) -> None:
    labels = {"vhost": vhost_of(system), "queue": "payment.stock-reserved"}
    # Before: every consumer present, no alert.
    assert not await firing(prometheus, "WarrenQueueWithoutConsumers", **labels)

    payments = ("payment_1", "payment_2")
    for name in payments:
        system.stop(name)
    placed = []
    try:
        for _ in range(5):  # orders keep coming: they wait in payment.stock-reserved
            answer = await api.post("/orders", json=order_body())
            assert answer.status_code == 202
            placed.append(answer.json()["order_id"])
        alerts = await eventually(
            lambda: firing(prometheus, "WarrenQueueWithoutConsumers", **labels),
            timeout=60,
            what="WarrenQueueWithoutConsumers firing for payment.stock-reserved",
        )
        assert re.fullmatch(
            r"nobody consumes payment\.stock-reserved", alerts[0]["annotations"]["summary"]
        )
    finally:
        for name in payments:
            system.start(name)

    await eventually(
        lambda: firing(prometheus, "WarrenQueueWithoutConsumers", **labels),
        until=lambda alerts: not alerts,
        timeout=60,
        what="the alert resolved",
    )
    # Nothing was lost while nobody consumed: every order placed meanwhile ends.
    for order_id in placed:
        assert (await final_order(api, order_id, timeout=60))["status"] == "CONFIRMED"


DASHBOARD = REPO / "infra" / "grafana" / "dashboards" / "warren.json"


async def test_every_dashboard_query_parses_and_returns_data(
    system: System, api: httpx.AsyncClient, prometheus: str
) -> None:
    """The Grafana dashboard's queries, run by this Prometheus after a few orders (Grafana's
    $__rate_interval as 30 s): each parses, and each has data -- a panel that stays empty
    would be a query for a metric nobody serves."""
    for token in ("tok_visa", "tok_visa", "tok_chargeDeclined"):
        answer = await api.post("/orders", json=order_body(token=token))
        await final_order(api, answer.json()["order_id"])
    queries = [
        (panel["title"], target["expr"].replace("$__rate_interval", "30s"))
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    ]

    async def empty() -> list[str]:
        missing = []
        async with httpx.AsyncClient() as client:
            for title, expr in queries:
                answer = (
                    await client.get(f"{prometheus}/api/v1/query", params={"query": expr})
                ).json()
                assert answer["status"] == "success", (title, expr, answer)
                if not answer["data"]["result"]:
                    missing.append(f"{title}: {expr}")
        return missing

    assert not await eventually(empty, until=lambda missing: not missing, timeout=60)


async def test_a_saga_latency_bucket_links_to_the_trace_of_an_order_in_it(
    system: System, api: httpx.AsyncClient, prometheus: str
) -> None:
    """Exemplars: the saga-duration sample an order's last event recorded keeps that order's
    trace id, and Prometheus stores it -- what Grafana's latency panels link to Jaeger with."""
    traces = set()
    for _ in range(3):
        answer = await api.post("/orders", json=order_body())
        traces.add(answer.headers["X-Trace-Id"])
        await final_order(api, answer.json()["order_id"])

    async def exemplar_traces() -> set[str]:
        async with httpx.AsyncClient() as client:
            answer = await client.get(
                f"{prometheus}/api/v1/query_exemplars",
                params={
                    "query": 'warren_saga_duration_seconds_bucket{state="CONFIRMED"}',
                    "start": time.time() - 600,
                    "end": time.time() + 60,
                },
            )
        assert answer.json()["status"] == "success", answer.text
        return {
            exemplar["labels"]["trace_id"]
            for series in answer.json()["data"]
            for exemplar in series["exemplars"]
        }

    linked = await eventually(exemplar_traces, until=lambda found: found & traces, timeout=60)
    assert all(re.fullmatch(r"[0-9a-f]{32}", trace_id) for trace_id in linked)
    dashboard = json.loads(DASHBOARD.read_text())
    latency = [
        t for p in dashboard["panels"] for t in p["targets"] if "_seconds_bucket" in t["expr"]
    ]
    assert latency and all(target.get("exemplar") for target in latency)


async def test_prometheus_has_every_metric_after_a_few_orders(
    system: System, api: httpx.AsyncClient, prometheus: str
) -> None:
    """Every metric family tests/e2e/test_metrics.py finds on the services, found again in
    Prometheus (its HTTP API), from the processes that serve it."""
    for token in ("tok_visa", "tok_chargeDeclined"):
        answer = await api.post("/orders", json=order_body(token=token))
        await final_order(api, answer.json()["order_id"])

    async def missing() -> list[str]:
        absent = []
        async with httpx.AsyncClient() as client:
            for family, processes in EXPECTED.items():
                query = f'count by (job) ({{__name__=~"{family}(_total|_bucket)?"}})'
                answer = await client.get(f"{prometheus}/api/v1/query", params={"query": query})
                jobs = {r["metric"]["job"] for r in answer.json()["data"]["result"]}
                absent += [f"{family} from {p}" for p in processes if f"warren-{p}" not in jobs]
        return absent

    assert not await eventually(missing, until=lambda absent: not absent, timeout=60)
