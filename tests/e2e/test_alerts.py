"""A real alert, on a real Prometheus: stop the payment consumers while orders come in, and
WarrenQueueWithoutConsumers fires for payment.stock-reserved (and WarrenBacklogGrowing's
series grow); start them again, and it resolves -- and every order placed meanwhile ends.

Prometheus (Debian's) scrapes this test system's services and the broker's metrics endpoint
every second, with infra/prometheus/alerts.yml's rules as they are, except their `for:`
durations, cut to a few seconds (promtool's tests cover the durations: tests/unit)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import yaml

from shared.testing.system import System, free_port
from tests.support.metrics import BROKER_METRICS
from tests.support.orders import final_order, order_body
from tests.support.polling import eventually

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "infra" / "prometheus" / "alerts.yml"


def answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def quick_rules(folder: Path) -> Path:
    """alerts.yml with every `for:` cut to 3 s (the expressions and labels untouched)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "3s"
    path = folder / "alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture(scope="module")
def prometheus(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: apt-get install prometheus (.ci/run installs it)")
    if not answers(BROKER_METRICS):
        pytest.fail(f"no RabbitMQ metrics on {BROKER_METRICS}: rabbitmq_prometheus is off")
    folder = tmp_path_factory.mktemp("prometheus")
    services = {name: port for name, port in system.ports.items() if name in system.processes}
    services = {n: p for n, p in services.items() if n not in {"smtp", "traces", "mail_api"}}
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(quick_rules(folder))],
        "scrape_configs": [
            {
                "job_name": "rabbitmq-queues",
                "metrics_path": "/metrics/detailed",
                "params": {"family": ["queue_coarse_metrics", "queue_consumer_count"]},
                "static_configs": [{"targets": [BROKER_METRICS]}],
            },
            *(
                {
                    "job_name": f"warren-{name}",
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                }
                for name, port in services.items()
            ),
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (folder / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(eventually(lambda: answers(f"127.0.0.1:{port}"), timeout=30))
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


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
    await eventually(lambda: answers(prometheus.removeprefix("http://")))
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
