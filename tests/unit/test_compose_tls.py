"""The TLS profile (docker-compose.tls.yml) read against docker-compose.yml: every client of the
broker and the database goes over TLS, as the same user, verifying Warren's CA -- and nothing
is left in the clear. (No Docker engine here: the handshakes themselves are tested against the
real broker in tests/integration/test_tls.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from cli.certs import SERVERS

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "docker-compose.yml"
TLS = REPO / "docker-compose.tls.yml"
CA = "/run/secrets/tls_ca"
# The operator's tools (`docker compose run --rm warren ...`): a client like the services.
TOOLS = "warren"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


base, tls = load(BASE), load(TLS)
# The clients of the one-node stack: the profile cluster's (order-2) are not covered, since the
# certificates name rabbitmq and mongo alone (the profile's header says so).
CLIENTS = sorted(
    name
    for name, service in base["services"].items()
    if {"RABBIT_URL", "MONGO_URL"} & set(service.get("environment") or {})
    and "cluster" not in service.get("profiles", [])
)


def _url(text: str) -> str:
    """A URL as urlsplit can read it: ``${RABBITMQ_USER:?set it in .env}`` -> RABBITMQ_USER."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}", r"\1", text)


def test_the_profile_matches_the_compose_schema() -> None:
    schema = REPO / "infra" / "compose-spec.schema.json"
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema), str(TLS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("name", CLIENTS)
def test_each_client_reaches_the_broker_over_amqps_as_the_same_user(name: str) -> None:
    plain = base["services"][name]["environment"]
    secured = tls["services"][name]["environment"]
    if name == "seed":
        # The shared default (x-app-env), left to a job that never uses the broker.
        assert "RABBIT_URL" not in secured
        return
    if "RABBIT_URL" in plain:
        before = urlsplit(_url(plain["RABBIT_URL"]))
        after = urlsplit(_url(secured["RABBIT_URL"]))
        assert (after.scheme, after.hostname, after.port) == ("amqps", "rabbitmq", 5671)
        assert after.username == before.username and after.password is None
        assert parse_qs(after.query) == {"cafile": [CA]}
    assert "RABBIT_URL" in plain or "RABBIT_URL" not in secured


@pytest.mark.parametrize("name", CLIENTS)
def test_each_client_reaches_mongodb_over_tls_as_the_same_user(name: str) -> None:
    plain = base["services"][name]["environment"]["MONGO_URL"]
    secured = tls["services"][name]["environment"]["MONGO_URL"]
    assert secured == f"{plain}&tls=true&tlsCAFile={CA}"


@pytest.mark.parametrize("name", CLIENTS)
def test_each_client_gets_the_ca_certificate_and_no_key(name: str) -> None:
    assert tls["services"][name]["secrets"] == [{"source": "tls_ca", "target": "tls_ca"}]


def test_the_servers_get_their_own_key_and_only_their_own() -> None:
    files = {name: spec["file"] for name, spec in tls["secrets"].items()}
    assert not any("ca-key" in file for file in files.values())  # the CA's key: nowhere
    assert set(tls["services"]["rabbitmq"]["secrets"]) == {
        "tls_ca",
        "rabbitmq_tls_cert",
        "rabbitmq_tls_key",
    }
    assert set(tls["services"]["mongo"]["secrets"]) == {"tls_ca", "mongo_tls"}
    # What `make certs` writes is what the profile mounts.
    written = {"ca.pem", "mongo-bundle.pem"} | {f"{s}.pem" for s in SERVERS}
    written |= {f"{s}-key.pem" for s in SERVERS}
    assert {Path(file).name for file in files.values()} <= written


def test_nothing_listens_in_the_clear() -> None:
    conf = (REPO / "infra" / "rabbitmq" / "tls.conf").read_text()
    assert "listeners.tcp = none" in conf.splitlines()
    assert "listeners.ssl.default = 5671" in conf.splitlines()
    mongod = tls["services"]["mongo"]["command"]
    assert mongod[mongod.index("--tlsMode") + 1] == "requireTLS"
    # The health check speaks TLS too, or it would fail against requireTLS.
    assert "--tls" in tls["services"]["mongo"]["healthcheck"]["test"]


def test_the_certificates_name_the_hosts_the_clients_dial() -> None:
    for name in CLIENTS:
        secured = tls["services"][name]["environment"]
        for url in (secured.get("RABBIT_URL"), secured["MONGO_URL"]):
            if url:
                host = urlsplit(_url(url)).hostname
                assert host in SERVERS and host in SERVERS[host], url


def test_the_replica_set_job_logs_in_over_tls() -> None:
    job = tls["services"]["mongo-replica-set"]
    assert job["entrypoint"][:5] == ["mongosh", "--quiet", "--tls", "--tlsCAFile", CA]
    assert job["entrypoint"][5:] == base["services"]["mongo-replica-set"]["entrypoint"][2:]
    assert job["secrets"] == [{"source": "tls_ca", "target": "tls_ca"}]


def test_the_profile_keeps_the_replica_set_options_of_every_member() -> None:
    # docker-compose.yml's entrypoint adds --replSet and --keyFile to whatever command runs.
    assert tls["services"]["mongo"]["command"][0] == "mongod"
    assert "entrypoint" not in tls["services"]["mongo"]


def test_the_operators_tools_go_over_tls_as_the_operator() -> None:
    assert TOOLS in CLIENTS  # and so through every test above
    secured = tls["services"][TOOLS]["environment"]
    assert urlsplit(_url(secured["RABBIT_URL"])).username == "RABBITMQ_USER"
    assert secured["MONGO_URL"].startswith("mongodb://operator@mongo:27017,")
