"""The alert rules (infra/prometheus/alerts.yml) tested as Prometheus would run them: promtool
feeds each rule series that must make it fire and series that must not (alerts.test.yml). Plus
what promtool cannot know: the rules name Warren's real queues, and each has its runbook."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cli import replicas
from shared import topology

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "infra" / "prometheus"
RULES = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
ALERTS = {rule["alert"]: rule for group in RULES["groups"] for rule in group["rules"]}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run installs it)")
    return found


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def test_every_rule_fires_and_stays_quiet_as_its_tests_say(promtool: str) -> None:
    result = run(promtool, "test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_has_a_test_that_fires_it(promtool: str) -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if not case.get("exp_alerts")
    }
    assert fired == set(ALERTS), set(ALERTS) - fired
    assert quiet == set(ALERTS), set(ALERTS) - quiet


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_the_prometheus_configurations_are_valid_and_load_the_rules(
    promtool: str, config: str
) -> None:
    result = run(promtool, "check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load((PROMETHEUS / config).read_text())["rule_files"] == ["alerts.yml"]


def test_the_no_consumer_rule_watches_exactly_the_queues_warren_consumes() -> None:
    expr = ALERTS["WarrenQueueWithoutConsumers"]["expr"]
    [pattern] = re.findall(r'queue=~"([^"]+)"', expr)
    watched = {name.replace("\\\\.", ".") for name in pattern.split("|")}
    assert watched == {queue.name for queue in topology.ALL_QUEUES_WITH_DLQ}


def test_every_service_is_scraped_locally_on_its_procfile_port() -> None:
    procfile = (REPO / "Procfile").read_text()
    ports = set(re.findall(r"services\.\w+ --port (\d+)", procfile))
    local = yaml.safe_load((PROMETHEUS / "prometheus.local.yml").read_text())
    targets = {
        target.rsplit(":", 1)[1]
        for job in local["scrape_configs"]
        if job["job_name"].startswith("warren-")
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    # The replicas' targets: the files make run writes (cli/replicas.py), at the defaults.
    default = replicas.scale(replicas.parse(procfile), dict(replicas.DEFAULT_REPLICAS))
    for service, found in replicas.targets(replicas.processes(default)).items():
        if service in replicas.DEFAULT_REPLICAS:
            targets |= {target.rsplit(":", 1)[1] for target in found}
    assert targets == ports


def test_every_alert_has_a_runbook_section() -> None:
    chapter = (REPO / "docs" / "13-monitoring.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9]+", "", line.lstrip("#").strip().lower())
        for line in chapter.splitlines()
        if line.startswith("### ")
    }
    for name, rule in ALERTS.items():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == name.lower()
        assert anchor in headings, f"docs/13-monitoring.md has no '### {name}' runbook"


# --- under compose: Prometheus, Alertmanager, Grafana wired to each other --------------------


COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def mounts(service: str) -> dict[str, str]:
    """container path -> host path of a service's bind mounts."""
    found = {}
    for volume in COMPOSE[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = source
    return found


def test_compose_prometheus_loads_the_tested_configuration_and_rules() -> None:
    assert mounts("prometheus") == {
        "/etc/prometheus/prometheus.yml": "./infra/prometheus/prometheus.yml",
        "/etc/prometheus/alerts.yml": "./infra/prometheus/alerts.yml",
    }
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    [manager] = config["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    # Every scraped host is a service of the compose file.
    for job in config["scrape_configs"]:
        hosts = [t.split(":")[0] for s in job.get("static_configs", []) for t in s["targets"]]
        hosts += [n for d in job.get("dns_sd_configs", []) for n in d["names"]]
        assert set(hosts) <= set(COMPOSE), job["job_name"]


def test_compose_alertmanager_configuration_is_valid_and_mails_through_mailpit() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool is missing: apt-get install prometheus-alertmanager")
    config = REPO / "infra" / "alertmanager" / "alertmanager.yml"
    checked = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert yaml.safe_load(config.read_text())["global"]["smtp_smarthost"] == "mailpit:1025"
    assert mounts("alertmanager") == {
        "/etc/alertmanager/alertmanager.yml": "./infra/alertmanager/alertmanager.yml"
    }


def test_compose_grafana_gets_its_data_sources_and_the_dashboard() -> None:
    grafana = REPO / "infra" / "grafana"
    assert mounts("grafana") == {
        "/etc/grafana/provisioning": "./infra/grafana/provisioning",
        "/var/lib/grafana/dashboards": "./infra/grafana/dashboards",
    }
    sources = yaml.safe_load((grafana / "provisioning/datasources/warren.yml").read_text())
    urls = {s["uid"]: s["url"] for s in sources["datasources"]}
    assert urls == {"prometheus": "http://prometheus:9090", "jaeger": "http://jaeger:16686"}
    provider = yaml.safe_load((grafana / "provisioning/dashboards/warren.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((grafana / "dashboards/warren.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {"prometheus"}
    assert COMPOSE["grafana"]["secrets"] == ["grafana_admin_password"]
