"""`warren --compose` reaches the compose stack from the host with .env's user and ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dotenv import dotenv_values

from cli import main
from cli.certs import SERVERS
from shared.settings import SECRETS_DIR_VARIABLE, WarrenSettings

REPO = Path(__file__).resolve().parents[2]


def test_compose_addresses_come_from_env_as_compose_publishes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    for name in (*main.COMPOSE_ADDRESSES, "WARREN_COMPOSE"):
        monkeypatch.setenv(name, "")  # recorded, so that what use_compose() sets is undone
        monkeypatch.delenv(name)
    monkeypatch.setenv("RABBITMQ_PASSWORD", "changed")  # the environment wins over .env
    env = dotenv_values(REPO / ".env")
    main.use_compose()
    assert os.environ["RABBIT_URL"] == (
        f"amqp://{env['RABBITMQ_USER']}:changed@127.0.0.1:{env['HOST_PORT_RABBITMQ']}/"
    )
    # MongoDB as the operator (infra/mongo/init-users.js), its password from .env.
    assert os.environ["MONGO_URL"] == (
        f"mongodb://operator@127.0.0.1:{env['HOST_PORT_MONGO']}/?authSource=admin"
        # the published member alone: the replica set names its members by compose's names
        "&directConnection=true"
    )
    assert os.environ["MONGO_PASSWORD"] == env["MONGO_PASSWORD_OPERATOR"]
    assert os.environ["MAIL_API_URL"] == f"http://127.0.0.1:{env['HOST_PORT_MAILPIT']}"
    assert os.environ["WARREN_API"] == f"http://127.0.0.1:{env['HOST_PORT_API']}"


def test_compose_without_the_values_says_which_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in ("RABBITMQ_USER", "RABBITMQ_PASSWORD", "HOST_PORT_RABBITMQ"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(main.typer.Exit):
        main.use_compose()


def test_compose_commands_log_in_to_mongodb_as_the_operator_with_a_quoted_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(SECRETS_DIR_VARIABLE, raising=False)
    for name in (*main.COMPOSE_ADDRESSES, "WARREN_COMPOSE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("MONGO_PASSWORD_OPERATOR", "op/er@tor")
    main.use_compose()
    settings = WarrenSettings()
    port = dotenv_values(REPO / ".env")["HOST_PORT_MONGO"]
    assert (
        settings.mongo_url
        == f"mongodb://operator:op%2Fer%40tor@127.0.0.1:{port}/?authSource=admin&directConnection=true"
    )


def test_with_the_tls_profile_the_tools_verify_the_broker_and_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """WARREN_TLS_CA (docker-compose.tls.yml): AMQPS on its own port and MongoDB over TLS, both
    verified against the CA, dialled as localhost -- a name the certificates carry."""
    monkeypatch.chdir(REPO)
    for name in (*main.COMPOSE_ADDRESSES, "WARREN_COMPOSE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("WARREN_TLS_CA", "/home/me/warren/secrets/tls/ca.pem")
    env = dotenv_values(REPO / ".env")
    main.use_compose()
    assert os.environ["RABBIT_URL"] == (
        f"amqps://{env['RABBITMQ_USER']}:{env['RABBITMQ_PASSWORD']}@localhost:"
        f"{env['HOST_PORT_RABBITMQ_TLS']}/?cafile=/home/me/warren/secrets/tls/ca.pem"
    )
    assert os.environ["MONGO_URL"].endswith(
        "&tls=true&tlsCAFile=/home/me/warren/secrets/tls/ca.pem"
    )
    assert "localhost" in SERVERS["rabbitmq"] and "localhost" in SERVERS["mongo"]
