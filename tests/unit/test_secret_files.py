"""Secrets as files (compose's `secrets:`): what each container reads from /run/secrets.

Under compose, env_file hands every container all of .env, so `environment:` blanks each secret
there and the containers that need one get it as a file. The settings read those files first
(WARREN_SECRETS_DIR); without the variable, the local run reads .env as it always did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dotenv import dotenv_values
from typer.testing import CliRunner

from cli.main import app
from services.order.settings import OrderSettings
from services.payment.settings import PaymentSettings
from shared.auth import TokenSettings
from shared.settings import SECRETS_DIR_VARIABLE, BrokerPasswords, WarrenSettings

REPO = Path(__file__).resolve().parents[2]
ENV = dotenv_values(REPO / ".env")
SECRET_NAMES = (
    "RABBITMQ_PASSWORD",
    "BROKER_PASSWORD_ORDER",
    "BROKER_PASSWORD_PAYMENT",
    "PAYMENT_TOKEN_KEYS",
    "API_TOKEN_SECRET",
)


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A container's view: no .env in its folder, the secrets blanked in its environment (as
    x-no-secrets-in-env does), and WARREN_SECRETS_DIR naming its /run/secrets."""
    (tmp_path / "app").mkdir()
    monkeypatch.chdir(tmp_path / "app")
    for name in SECRET_NAMES:
        monkeypatch.setenv(name, "")
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    monkeypatch.setenv(SECRETS_DIR_VARIABLE, str(secrets))
    return secrets


def test_a_service_connects_with_the_password_of_its_secret_file(
    container: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RABBIT_URL", "amqp://payment@rabbitmq:5672/")
    (container / "rabbit_password").write_text("pay/ment@dev-password\n")
    settings = WarrenSettings()
    assert settings.rabbit_url == "amqp://payment:pay%2Fment%40dev-password@rabbitmq:5672/"
    assert settings.broker_user == "payment"
    assert "dev-password" not in repr(settings.rabbit_password)


def test_a_service_logs_in_to_mongodb_with_the_password_of_its_secret_file(
    container: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONGO_URL", "mongodb://audit@mongo:27017/?authSource=admin")
    (container / "mongo_password").write_text("au/dit@dev-password\n")
    settings = WarrenSettings()
    assert (
        settings.mongo_url
        == "mongodb://audit:au%2Fdit%40dev-password@mongo:27017/?authSource=admin"
    )
    assert "dev-password" not in repr(settings.mongo_password)


def test_a_mongodb_password_for_nobody_is_refused_without_showing_it(
    container: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MONGO_URL lost its user (or the default, 127.0.0.1): the password would log in as nobody.
    monkeypatch.delenv("MONGO_URL", raising=False)
    (container / "mongo_password").write_text("never-shown-password\n")
    with pytest.raises(ValueError, match="names no user") as refused:
        WarrenSettings()
    assert "never-shown-password" not in str(refused.value)


def test_the_payment_keys_file_wins_over_the_blank_that_env_file_would_fill(
    container: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYMENT_TOKEN_KEY_ID", ENV["PAYMENT_TOKEN_KEY_ID"] or "")
    (container / "payment_token_keys").write_text(ENV["PAYMENT_TOKEN_KEYS"] or "")
    settings = PaymentSettings()
    assert set(settings.token_keys()) == set(json.loads(ENV["PAYMENT_TOKEN_KEYS"] or ""))


def test_the_order_service_reads_the_api_token_key_from_its_file(
    container: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PAYMENT_TOKEN_KEY_ID", "PAYMENT_TOKEN_PUBLIC_KEY"):
        monkeypatch.setenv(name, ENV[name] or "")
    (container / "api_token_secret").write_text(f"{ENV['API_TOKEN_SECRET']}\n")
    assert OrderSettings().api_token_secret.get_secret_value() == ENV["API_TOKEN_SECRET"]


def test_warren_token_in_the_order_container_signs_with_the_key_of_its_file(
    container: Path,
) -> None:
    # `docker compose exec order warren token bugs-bunny`: TokenSettings alone, no OrderSettings.
    (container / "api_token_secret").write_text(f"{ENV['API_TOKEN_SECRET']}\n")
    result = CliRunner().invoke(app, ["token", "bugs-bunny"])
    assert result.exit_code == 0, result.output
    secret = TokenSettings().api_token_secret.get_secret_value()
    assert secret == ENV["API_TOKEN_SECRET"]


def test_a_container_without_the_file_gets_no_secret(container: Path) -> None:
    with pytest.raises(ValueError, match="payment_token_keys"):
        PaymentSettings()  # blank variable, no file: refused, the value never shown


def test_the_broker_definitions_job_reads_every_password_from_files(container: Path) -> None:
    (container / "broker_password_order").write_text("order-secret\n")
    (container / "broker_password_payment").write_text("payment-secret\n")
    assert BrokerPasswords().configured() == {"order": "order-secret", "payment": "payment-secret"}


def test_topology_export_hashes_the_operators_password_from_its_file(
    container: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RABBITMQ_USER", "warren")
    (container / "rabbitmq_password").write_text("operator-secret\n")
    (container / "broker_password_order").write_text("order-secret\n")
    result = CliRunner().invoke(app, ["topology", "export"])
    assert result.exit_code == 0, result.output
    users = {user["name"] for user in json.loads(result.output)["users"]}
    assert {"warren", "order"} <= users
    assert "secret" not in result.output  # hashes only


def test_without_a_secrets_folder_the_local_run_reads_env_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(SECRETS_DIR_VARIABLE, raising=False)
    for name in ("RABBIT_URL", "RABBIT_PASSWORD", "MONGO_URL", "MONGO_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    settings = WarrenSettings()
    assert settings.rabbit_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.rabbit_password is None
    # No MongoDB login: .env's MONGO_PASSWORD_* are compose's, the stand-in has no users.
    assert settings.mongo_url == "mongodb://127.0.0.1:27017"
    assert settings.mongo_password is None


def test_warren_secrets_write_makes_one_readable_file_per_secret_the_shell_winning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BROKER_PASSWORD_ORDER", "changed-in-the-shell")
    result = CliRunner().invoke(app, ["secrets", "write", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = {path.name: path.read_text().strip() for path in tmp_path.iterdir()}
    assert written["broker_password_order"] == "changed-in-the-shell"
    assert written["payment_token_keys"] == ENV["PAYMENT_TOKEN_KEYS"]
    assert {"rabbitmq_password", "api_token_secret"} <= set(written)
    assert "payment_token_public_key" not in written  # public: not a secret
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in tmp_path.iterdir())
