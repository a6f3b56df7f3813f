"""Draw chapter 13's pictures from a real run: an alert firing in Prometheus, and the queue it
is about, as a graph.

It starts a whole Warren (the test harness: its own vhost, the MongoDB stand-in, every service)
and a Prometheus scraping it (shared/testing/prometheus.py: the rules with `for:` cut to
seconds), places an order every 0.3 s, stops both payment consumers for 40 s, starts them again,
and screenshots Prometheus' pages with headless Chromium:

  docs/img/monitoring-alert-firing.png   the Alerts page, WarrenQueueWithoutConsumers firing
  docs/img/monitoring-backlog.png        payment.stock-reserved: ready messages and consumers

    .venv/bin/python scripts/monitoring_pictures.py [--output docs/img]   (about 3 minutes)

Needs: RabbitMQ with its Prometheus plugin (make test enables it), `prometheus`, `chromium`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import httpx
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.testing.prometheus import running_prometheus  # noqa: E402
from shared.testing.system import (  # noqa: E402
    System,
    api_client,
    mongo_standin,
    mongo_url_of,
    running_system,
)

QUEUE = "payment.stock-reserved"


def log(message: str) -> None:
    print(f"[pictures] {message}", flush=True)


def screenshot(url: str, output: Path, size: str = "1400,820") -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is missing (apt-get install chromium)")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={size}",
            "--virtual-time-budget=8000",
            f"--screenshot={output}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    log(f"wrote {output}")


async def keep_ordering(system: System, stop: asyncio.Event) -> int:
    """An order every 0.3 s until ``stop``; how many were accepted."""
    placed = 0
    async with api_client(system, timeout=10.0) as api:
        body = {"lines": [{"sku": "RABBIT-PLUSH", "quantity": 1}], "payment_token": "tok_visa"}
        while not stop.is_set():
            answer = await api.post("/orders", json=body)
            placed += answer.status_code == 202
            await asyncio.sleep(0.3)
    return placed


async def firing(prometheus: str) -> bool:
    async with httpx.AsyncClient() as client:
        alerts = (await client.get(f"{prometheus}/api/v1/alerts")).json()["data"]["alerts"]
    return any(
        a["labels"]["alertname"] == "WarrenQueueWithoutConsumers"
        and a["labels"].get("queue") == QUEUE
        and a["state"] == "firing"
        for a in alerts
    )


async def scenario(system: System, prometheus: str, output: Path) -> None:
    stop = asyncio.Event()
    ordering = asyncio.create_task(keep_ordering(system, stop))
    log("ordering, every consumer up (20 s)")
    await asyncio.sleep(20)
    log("payment stopped (40 s)")
    for name in ("payment_1", "payment_2"):
        system.stop(name)
    started = time.monotonic()
    while not await firing(prometheus):
        if time.monotonic() - started > 60:
            raise SystemExit("the alert did not fire")
        await asyncio.sleep(1)
    await asyncio.sleep(max(0.0, 40 - (time.monotonic() - started)))
    # Debian's Prometheus serves its classic pages only (/classic/alerts).
    screenshot(f"{prometheus}/classic/alerts", output / "monitoring-alert-firing.png")
    log("payment started again (40 s)")
    for name in ("payment_1", "payment_2"):
        await asyncio.to_thread(system.start, name)  # waits for its health check
    await asyncio.sleep(40)
    stop.set()
    log(f"{await ordering} orders placed")
    query = {
        "g0.expr": f'sum(rabbitmq_detailed_queue_messages_ready{{queue="{QUEUE}"}})',
        "g0.tab": "0",
        "g0.range_input": "2m",
        "g1.expr": f'sum(rabbitmq_detailed_queue_consumers{{queue="{QUEUE}"}})',
        "g1.tab": "0",
        "g1.range_input": "2m",
    }
    screenshot(
        f"{prometheus}/graph?{urlencode(query)}", output / "monitoring-backlog.png", "1400,1100"
    )


def main(
    output: Path = typer.Option(REPO / "docs" / "img", help="Where the pictures go."),
    rabbit_url: str = typer.Option(
        "amqp://guest:guest@127.0.0.1:5672/", envvar="RABBIT_URL", help="The broker (operator)."
    ),
    broker_metrics: str = typer.Option(
        "127.0.0.1:15692", help="RabbitMQ's Prometheus endpoint (host:port)."
    ),
) -> None:
    """Run the system, fire an alert, and screenshot it (see the module's help)."""
    output.mkdir(parents=True, exist_ok=True)
    vhost = f"pictures-{uuid.uuid4().hex[:6]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="warren-pictures-") as scratch:
            run_dir = Path(scratch)
            database = mongo_standin(run_dir / "mongo")
            database.start()
            url = f"{rabbit_url.rstrip('/')}/{vhost}"

            async def run() -> None:
                async with running_system(
                    url, mongo_url_of(database), run_dir, "pictures", database=database
                ) as system:
                    with running_prometheus(system, broker_metrics, run_dir / "prometheus") as prom:
                        await scenario(system, prom, output)

            asyncio.run(run())
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


if __name__ == "__main__":
    os.chdir(REPO)
    typer.run(main)
