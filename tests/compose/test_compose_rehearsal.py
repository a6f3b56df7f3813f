"""The compose rehearsal (`make compose-rehearsal`): passwords changed for compose (its secret
files) reach the broker and every service, and the rehearsal fails when compose and the code
disagree.

With one variable taken out of docker-compose.yml, the app containers fall back to the code's
defaults (127.0.0.1), which in a container -- and in the rehearsal's network namespace -- is
nobody. With one secret no longer blanked, env_file would hand it to every container. A service
that names its MongoDB user but gets no password could not log in (the stand-in has no
authentication: the rehearsal checks the login is there, then connects without). The operator's
tools (`docker compose run --rm warren ledger`) run last, as the operator: without the
operator's broker password they cannot read the dead-letter queues, and the rehearsal fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from shared.testing.system import free_port, rabbitmqctl_command

REPO = Path(__file__).resolve().parents[2]


def _rehearse(compose_file: Path, rabbit_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    rabbitmqctl = rabbitmqctl_command()
    if rabbitmqctl is None or shutil.which("ip") is None:
        pytest.skip("the rehearsal needs root, rabbitmqctl and iproute2")
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "compose_rehearsal.py"),
            "--compose-file",
            str(compose_file),
            "--broker-port",
            str(urlparse(rabbit_url).port or 5672),
            "--rabbitmqctl",
            " ".join(rabbitmqctl),
        ],
        env={**os.environ, "HOST_PORT_API": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _project(tmp_path: Path, compose: str | None = None) -> Path:
    """A copy of what compose reads: the compose file, .env and the secret files."""
    (tmp_path / "docker-compose.yml").write_text(
        compose or (REPO / "docker-compose.yml").read_text()
    )
    shutil.copy(REPO / ".env", tmp_path / ".env")
    shutil.copytree(REPO / "secrets", tmp_path / "secrets")
    return tmp_path / "docker-compose.yml"


def test_a_password_changed_for_compose_reaches_the_broker_and_every_service(
    rabbit_url: str, tmp_path: Path
) -> None:
    compose_file = _project(tmp_path)
    # The operator's password and every service's: the job hashes them into the definitions
    # the broker imports, each service logs in with its own, read from its secret file.
    for secret in (tmp_path / "secrets").glob("*password*"):
        secret.write_text(f"changed-{uuid.uuid4().hex[:8]}\n")
    result = _rehearse(compose_file, rabbit_url)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "CONFIRMED, traced by" in result.stdout, result.stdout[-3000:]
    assert "wrote nothing into their working folder or HOME" in result.stdout
    # Each its own MongoDB user, its password present (the stand-in then takes no login).
    for container, user in (
        ("seed", "inventory"),
        ("order", "order"),
        ("audit", "audit"),
        ("warren", "operator"),
    ):
        assert f"{container}: logs in to MongoDB as {user} (password: its secret file)" in (
            result.stdout
        )
    # The operator's tools: `docker compose run --rm warren ledger`, with the operator's
    # changed broker password, and the one order balanced in every service's database.
    assert "warren: `docker compose run --rm warren ledger --wait 30`, as the operator" in (
        result.stdout
    )


def test_the_rehearsal_fails_when_a_secret_reaches_an_environment(
    rabbit_url: str, tmp_path: Path
) -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    blank = '  BROKER_PASSWORD_ORDER: ""\n'
    assert compose.count(blank) == 1
    result = _rehearse(_project(tmp_path, compose.replace(blank, "")), rabbit_url)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "its environment carries BROKER_PASSWORD_ORDER" in result.stdout, result.stdout[-2000:]


def _without_in_service(compose: str, service: str, text: str) -> str:
    """``compose`` with ``text`` taken out of one service's section (and nowhere else)."""
    start = compose.index(f"\n  {service}:\n")
    end = compose.index("\n  # ---", start)
    section = compose[start:end]
    assert section.count(text) == 1, (service, text)
    return compose[:start] + section.replace(text, "") + compose[end:]


def test_the_rehearsal_fails_when_compose_loses_a_variable(rabbit_url: str, tmp_path: Path) -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    line = "      MONGO_URL: mongodb://inventory@mongo:27017,mongo-2:27017,mongo-3:27017/?authSource=admin&replicaSet=rs0&w=majority&journal=true&retryWrites=true\n"
    result = _rehearse(_project(tmp_path, _without_in_service(compose, "seed", line)), rabbit_url)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "FAILED: seed exited with 1" in result.stdout, result.stdout[-2000:]
    # The default it fell back to, with the password of its secret file for nobody: refused.
    assert "MONGO_URL (mongodb://127.0.0.1:27017) names no user" in result.stdout


def test_the_rehearsal_fails_when_a_service_names_its_mongodb_user_without_its_password(
    rabbit_url: str, tmp_path: Path
) -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    secret = "      - source: mongo_password_audit\n        target: mongo_password\n"
    result = _rehearse(
        _project(tmp_path, _without_in_service(compose, "audit", secret)), rabbit_url
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert (
        "FAILED: audit: MONGO_URL names the user audit but the container gets no secret "
        "mongo_password"
    ) in result.stdout, result.stdout[-2000:]


def test_the_rehearsal_fails_when_the_tools_lose_the_operators_broker_password(
    rabbit_url: str, tmp_path: Path
) -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    secret = "      - source: rabbitmq_password\n        target: rabbit_password\n"
    result = _rehearse(
        _project(tmp_path, _without_in_service(compose, "warren", secret)), rabbit_url
    )
    assert result.returncode == 1, result.stdout[-2000:]
    # No password: the ledger cannot read the dead-letter queues, as the operator or anyone.
    assert "`docker compose run --rm warren ledger --wait 30` exited with 1" in result.stdout
    assert "cannot read the queues" in result.stdout, result.stdout[-2000:]
