"""make run's replicas (cli/replicas.py): ORDER_REPLICAS, PAYMENT_REPLICAS ... -> a Procfile
with one line per replica, each on a port of its own, and the scrape targets of every replica."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import replicas, top

REPO = Path(__file__).resolve().parents[2]
PROCFILE = (REPO / "Procfile").read_text()
ANY_PORT = re.compile(r"--(?:api-)?port (\d+)")


def scaled(payment: int = 2, inventory: int = 1) -> list[replicas.Line]:
    entries = replicas.scale(replicas.parse(PROCFILE), {"payment": payment, "inventory": inventory})
    return replicas.processes(entries)


def test_the_default_run_is_todays_procfile_line_for_line() -> None:
    default = replicas.scale(replicas.parse(PROCFILE), dict(replicas.DEFAULT_REPLICAS))
    assert replicas.render(default) == PROCFILE


def test_three_payment_replicas_get_three_lines_on_ports_of_their_own() -> None:
    payments = {line.name: line.port for line in scaled(payment=3) if line.service == "payment"}
    assert payments == {"payment_1": 8002, "payment_2": 8012, "payment_3": 8022}


def test_one_payment_replica_is_payment_1_alone() -> None:
    assert [line.name for line in scaled(payment=1) if line.service == "payment"] == ["payment_1"]


def test_extra_inventory_replicas_leave_the_seeding_to_the_first() -> None:
    lines = [line for line in scaled(inventory=3) if line.service == "inventory"]
    assert [(line.name, line.port) for line in lines] == [
        ("inventory", 8001),
        ("inventory_2", 8011),
        ("inventory_3", 8021),
    ]
    assert lines[0].command.startswith("warren seed && ")
    assert not any("warren seed" in line.command for line in lines[1:])


def test_every_process_has_a_port_of_its_own_at_the_most_replicas() -> None:
    most = replicas.MAX_REPLICAS
    text = replicas.render(
        replicas.scale(replicas.parse(PROCFILE), {"payment": most, "inventory": most})
    )
    ports = [int(port) for port in ANY_PORT.findall(text)]
    assert len(ports) == len(set(ports))
    entries = replicas.processes(replicas.parse(text))
    assert max(line.port for line in entries if line.port) < 8100  # the last replica: 8082
    names = [
        line.partition(":")[0] for line in text.splitlines() if line and not line.startswith("#")
    ]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("count", [0, replicas.MAX_REPLICAS + 1])
def test_a_replica_count_out_of_range_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="replicas"):
        scaled(payment=count)


def test_the_traces_collector_is_not_scaled_here() -> None:
    with pytest.raises(ValueError, match="does not scale traces"):
        replicas.scale(replicas.parse(PROCFILE), {"traces": 2})


def test_every_service_of_the_saga_scales_each_replica_on_a_port_of_its_own() -> None:
    counts = {"order": 2, "inventory": 2, "payment": 2, "notification": 2, "emails": 2}
    lines = replicas.processes(replicas.scale(replicas.parse(PROCFILE), counts))
    names = [line.name for line in lines]
    for process in ("order", "inventory", "notification", "emails"):
        assert names.count(process) == 1 and names.count(f"{process}_2") == 1, names
    assert replicas.targets(lines) == {
        "order": ["127.0.0.1:8000", "127.0.0.1:8010"],
        "inventory": ["127.0.0.1:8001", "127.0.0.1:8011"],
        "payment": ["127.0.0.1:8002", "127.0.0.1:8012"],
        "notification": ["127.0.0.1:8003", "127.0.0.1:8013"],
        "audit": ["127.0.0.1:8004"],
    }
    [second_worker] = [line for line in lines if line.name == "emails_2"]
    assert "services.notification.worker" in second_worker.command  # no port: none to move


def test_the_targets_of_every_replica_are_written_for_prometheus_and_read_back(
    tmp_path: Path,
) -> None:
    replicas.write_targets(replicas.targets(scaled(payment=3)), tmp_path)
    payment = json.loads((tmp_path / "warren-payment.json").read_text())
    # Prometheus' file_sd format: a list of target groups. No labels: they would rename the
    # services' own `service` label.
    assert payment == [
        {"targets": ["127.0.0.1:8002", "127.0.0.1:8012", "127.0.0.1:8022"], "labels": {}}
    ]
    assert replicas.read_targets(tmp_path) == {
        "order": ["127.0.0.1:8000"],
        "inventory": ["127.0.0.1:8001"],
        "payment": ["127.0.0.1:8002", "127.0.0.1:8012", "127.0.0.1:8022"],
        "notification": ["127.0.0.1:8003"],
    }


def test_prometheus_reads_the_files_make_run_writes() -> None:
    config_dir = REPO / "infra" / "prometheus"
    local = yaml.safe_load((config_dir / "prometheus.local.yml").read_text())
    files = {
        job["job_name"]: (config_dir / path).resolve()
        for job in local["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for path in sd["files"]
    }
    broker = (REPO / replicas.SCRAPE_DIR / "rabbitmq.json").resolve()
    assert files == {
        **{
            f"warren-{service}": (REPO / replicas.SCRAPE_DIR / f"warren-{service}.json").resolve()
            for service in replicas.SCRAPED
        },
        "rabbitmq": broker,
        "rabbitmq-queues": broker,
    }


def test_warren_top_watches_every_replica() -> None:
    found = top.local_targets(replicas.targets(scaled(payment=3)))
    assert {name: url for name, url in found.items() if name.startswith("payment")} == {
        "payment": "http://127.0.0.1:8002",
        "payment-2": "http://127.0.0.1:8012",
        "payment-3": "http://127.0.0.1:8022",
    }
    assert top.local_targets({}) == top.LOCAL_TARGETS


def test_the_command_writes_the_procfile_and_the_targets(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        replicas.app,
        [
            "--payment", "3",
            "--procfile", str(REPO / "Procfile"),
            "--output", str(tmp_path / "Procfile"),
            "--scrape-dir", str(tmp_path / "scrape"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "payment :8002 :8012 :8022" in result.output
    assert "payment_3:" in (tmp_path / "Procfile").read_text()
    assert (tmp_path / "scrape" / "warren-payment.json").exists()


def test_the_broker_targets_are_the_machines_rabbitmq_or_each_node_of_make_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--output", str(tmp_path / "Procfile"), "--scrape-dir", str(tmp_path / "scrape")]
    args += ["--procfile", str(REPO / "Procfile")]
    monkeypatch.delenv("RABBITMQ_METRICS_TARGETS", raising=False)
    assert CliRunner().invoke(replicas.app, args).exit_code == 0
    assert replicas.read_broker_targets(tmp_path / "scrape") == ["127.0.0.1:15692"]
    cluster = subprocess.run(
        [str(REPO / "scripts" / "rabbitmq-cluster.sh"), "env"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    nodes = re.search(r"^export RABBITMQ_METRICS_TARGETS=(\S+)$", cluster, re.MULTILINE)
    assert nodes
    monkeypatch.setenv("RABBITMQ_METRICS_TARGETS", nodes.group(1))
    assert CliRunner().invoke(replicas.app, args).exit_code == 0
    written = replicas.read_broker_targets(tmp_path / "scrape")
    assert written == ["127.0.0.1:15701", "127.0.0.1:15702", "127.0.0.1:15703"]
    # warren top reads the same ones, each node's endpoint, and adds them up.
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".run").mkdir()
    (tmp_path / "scrape").rename(tmp_path / ".run" / "scrape")
    assert top.broker_endpoints(None) == [f"http://{target}" for target in written]
    assert top.broker_endpoints("http://a:1,http://b:2") == ["http://a:1", "http://b:2"]


def test_the_command_refuses_a_count_out_of_range(tmp_path: Path) -> None:
    result = CliRunner().invoke(replicas.app, ["--payment", "0", "--output", str(tmp_path / "P")])
    assert result.exit_code != 0
    assert not (tmp_path / "P").exists()
