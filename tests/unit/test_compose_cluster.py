"""docker-compose.yml's profile cluster, checked without a Docker engine.

Three RabbitMQ nodes that find each other (infra/rabbitmq/cluster.conf) and share one Erlang
cookie, HAProxy in front of them and of the two order replicas (infra/haproxy/haproxy.cfg),
MongoDB's two more members (their replica set: tests/unit/test_mongo_replica_set.py), and
`make compose-cluster`, which sets the variables the profile needs. The broker configuration's
cluster settings are run for real against RabbitMQ 4.x by scripts/compose-cluster-rehearsal.sh
(docs/18-scaling.md); here, that the files and the compose file agree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from tests.support.deployment import rabbitmq_conf

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ENV = dotenv_values(REPO / ".env")
RABBITMQ = REPO / "infra" / "rabbitmq"
HAPROXY_CFG = REPO / "infra" / "haproxy" / "haproxy.cfg"
COOKIE_INSTALL = 'install -m 400 /run/secrets/broker_erlang_cookie "$$HOME/.erlang.cookie"'


def _broker_nodes() -> list[str]:
    return [name for name, svc in SERVICES.items() if svc.get("image", "").startswith("rabbitmq:")]


def _mounted(svc: dict[str, Any], target: str) -> str | None:
    for volume in svc.get("volumes", []):
        source, mount = volume.split(":")[:2]
        if mount == target:
            return source
    return None


def test_the_profile_holds_the_other_members_the_balancer_and_the_second_order() -> None:
    in_profile = {name for name, svc in SERVICES.items() if "cluster" in svc.get("profiles", [])}
    assert in_profile == {
        "rabbitmq-2",
        "rabbitmq-3",
        "mongo-2",
        "mongo-3",
        "mongo-members",
        "haproxy",
        "order-2",
    }
    for name in in_profile:
        assert SERVICES[name]["profiles"] == ["cluster"], name


def test_three_broker_nodes_each_with_its_own_name_and_data() -> None:
    assert _broker_nodes() == ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    data = set()
    for name in _broker_nodes():
        svc = SERVICES[name]
        # rabbit@<hostname> names the node and its data directory: fixed, or a re-created
        # container would come back as a stranger to its cluster.
        assert svc["hostname"] == name
        data.add(_mounted(svc, "/var/lib/rabbitmq"))
        assert (
            _mounted(svc, "/etc/rabbitmq/conf.d/20-warren.conf") == "./infra/rabbitmq/rabbitmq.conf"
        )
        assert svc["image"] == SERVICES["rabbitmq"]["image"], name
    assert data == {"rabbitmq-data", "rabbitmq-2-data", "rabbitmq-3-data"}


def test_every_node_uses_the_one_cookie_copied_as_erlang_wants_it() -> None:
    for name in _broker_nodes():
        svc = SERVICES[name]
        assert "broker_erlang_cookie" in svc["secrets"], name
        shell, flag, script, _ = svc["entrypoint"]
        assert (shell, flag) == ("sh", "-c"), name
        assert script == f'{COOKIE_INSTALL} && exec docker-entrypoint.sh "$$@"', name
        assert svc["command"] == ["rabbitmq-server"], name
    assert len(ENV["BROKER_ERLANG_COOKIE"] or "") >= 20


def test_the_other_two_nodes_join_the_first_by_their_compose_names() -> None:
    cluster_conf = rabbitmq_conf(RABBITMQ / "cluster.conf")
    assert cluster_conf["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = [
        v
        for k, v in sorted(cluster_conf.items())
        if k.startswith("cluster_formation.classic_config.nodes.")
    ]
    assert listed == [f"rabbit@{SERVICES[name]['hostname']}" for name in _broker_nodes()]
    # Only the joiners have the list: rabbitmq boots alone in both profiles.
    target = "/etc/rabbitmq/conf.d/30-cluster.conf"
    assert _mounted(SERVICES["rabbitmq"], target) is None
    for name in ("rabbitmq-2", "rabbitmq-3"):
        assert _mounted(SERVICES[name], target) == "./infra/rabbitmq/cluster.conf", name
        assert SERVICES[name]["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}


def test_quorum_queues_grow_to_every_node_and_a_cut_off_node_pauses() -> None:
    conf = rabbitmq_conf(RABBITMQ / "rabbitmq.conf")
    assert conf["quorum_queue.continuous_membership_reconciliation.enabled"] == "true"
    target = int(conf["quorum_queue.continuous_membership_reconciliation.target_group_size"])
    assert target == len(_broker_nodes())
    assert conf["cluster_partition_handling"] == "pause_minority"


def _haproxy_servers(section: str) -> list[str]:
    text = HAPROXY_CFG.read_text(encoding="utf-8")
    body = re.search(rf"^listen {section}\n(.*?)(?=^\S|\Z)", text, re.MULTILINE | re.DOTALL)
    assert body, section
    return re.findall(r"^\s+server \S+ (\S+) check", body.group(1), re.MULTILINE)


def test_haproxy_fronts_every_node_and_every_order_replica() -> None:
    assert _haproxy_servers("amqp") == [f"{name}:5672" for name in _broker_nodes()]
    orders = [name for name in SERVICES if name == "order" or name.startswith("order-")]
    assert _haproxy_servers("api") == [f"{name}:8000" for name in orders]
    haproxy = SERVICES["haproxy"]
    assert _mounted(haproxy, "/usr/local/etc/haproxy/haproxy.cfg") == "./infra/haproxy/haproxy.cfg"
    published = {port.rsplit(":", 1)[1] for port in haproxy["ports"]}
    assert published == {"8000", "8404"}
    assert "8404/healthz" in " ".join(haproxy["healthcheck"]["test"])
    assert "depends_on" not in haproxy  # up first; a server is down until it answers


def test_haproxy_accepts_its_configuration() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy is missing: apt-get install haproxy (.ci/run installs it)")
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_services_reach_the_broker_at_broker_host() -> None:
    assert ENV["BROKER_HOST"] == "rabbitmq"  # the default: one node, no HAProxy
    for name, svc in SERVICES.items():
        url = str((svc.get("environment") or {}).get("RABBIT_URL", ""))
        if url:
            assert "@${BROKER_HOST:?set it in .env}:5672/" in url, name


def test_cluster_env_starts_the_profile_behind_haproxy_with_two_of_each() -> None:
    """cluster.env, read after .env: the profile, HAProxy for the broker, two replicas of each
    consumer; and make compose-cluster reads it for every command."""
    cluster = dotenv_values(REPO / "cluster.env")
    assert cluster["COMPOSE_PROFILES"] == "cluster"
    assert cluster["BROKER_HOST"] == "haproxy"
    replicas = [name for name in cluster if name.endswith("_REPLICAS")]
    assert set(replicas) == {
        "INVENTORY_REPLICAS",
        "PAYMENT_REPLICAS",
        "NOTIFICATION_REPLICAS",
        "EMAILS_REPLICAS",
    }
    for name in replicas:
        assert int(cluster[name] or 0) >= 2, name
    # Everything it sets is a variable of .env (so the compose file reads it) or compose's own.
    assert set(cluster) - {"COMPOSE_PROFILES"} <= set(ENV)
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "COMPOSE_CLUSTER := docker compose --env-file .env --env-file cluster.env" in makefile
    assert "\t$(COMPOSE_CLUSTER) up --build --wait" in makefile


def _started_by_up(profile: str | None) -> set[str]:
    return {
        name
        for name, svc in SERVICES.items()
        if not svc.get("profiles") or profile in svc.get("profiles", [])
    }


@pytest.mark.parametrize("profile", [None, "cluster"])
def test_up_wait_sees_every_one_shot_job_that_up_starts_finish(profile: str | None) -> None:
    """`docker compose up --wait` treats a container that exited as a failure unless a service
    waits for it to complete: every job `up` starts needs one such dependent in the profile."""
    started = _started_by_up(profile)
    jobs = {name for name in started if SERVICES[name].get("restart") == "no"}
    assert {"broker-definitions", "seed", "mongo-replica-set"} <= jobs
    for job in jobs:
        dependents = [
            name
            for name in started
            if (SERVICES[name].get("depends_on") or {}).get(job, {}).get("condition")
            == "service_completed_successfully"
        ]
        assert dependents, f"{job} (profile {profile}): nothing waits for it to complete"
