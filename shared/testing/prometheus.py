"""A Prometheus of a test's (or a script's) own, scraping a running test system.

It scrapes the system's services and the broker's per-queue metrics every second, with
infra/prometheus/alerts.yml's rules as they are but their `for:` durations cut to seconds
(promtool's tests cover the durations). Debian's `prometheus` binary; stopped on exit.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from shared.testing.system import REPO, System, free_port

RULES = REPO / "infra" / "prometheus" / "alerts.yml"
# The processes of a test system that serve /metrics (the others are plumbing).
NOT_SCRAPED = frozenset({"smtp", "traces", "mail_api", "emails"})


def answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def quick_rules(folder: Path, for_: str = "3s") -> Path:
    """alerts.yml with every `for:` cut to ``for_`` (the expressions and labels untouched)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    path = folder / "alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def config_for(system: System, broker_metrics: str, rules: Path) -> dict[str, Any]:
    # The broker's per-queue series for this system's vhost only: other vhosts of the machine
    # (other test runs) have queues nobody consumes.
    vhost = unquote(urlsplit(system.env["RABBIT_URL"]).path[1:]) or "/"
    services = {
        name: port
        for name, port in system.ports.items()
        if name in system.processes and name not in NOT_SCRAPED
    }
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "rabbitmq-queues",
                "metrics_path": "/metrics/detailed",
                "params": {
                    "family": ["queue_coarse_metrics", "queue_consumer_count"],
                    "vhost": [vhost],
                },
                "static_configs": [{"targets": [broker_metrics]}],
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


@contextmanager
def running_prometheus(system: System, broker_metrics: str, folder: Path) -> Iterator[str]:
    """Prometheus scraping ``system`` and the broker's metrics endpoint; yields its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    config = config_for(system, broker_metrics, quick_rules(folder))
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (folder / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--enable-feature=exemplar-storage",  # as make run's and compose's
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not answers(f"127.0.0.1:{port}"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not start: {folder / 'prometheus.log'}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
