"""`warren keys generate`: .env lines that the services read back, and a rotation that keeps
the keys payment holds now."""

from __future__ import annotations

import io
import json

import pytest
from dotenv import dotenv_values
from typer.testing import CliRunner

from cli.main import app
from shared.sealing import private_keys_from_text, public_key_from_text, seal, unseal

runner = CliRunner()


def generate(*args: str) -> dict[str, str]:
    result = runner.invoke(app, ["keys", "generate", *args])
    assert result.exit_code == 0, result.output
    return {k: v or "" for k, v in dotenv_values(stream=io.StringIO(result.output)).items()}


def test_the_printed_lines_are_a_key_pair_the_services_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PAYMENT_TOKEN_KEYS", raising=False)
    env = generate("--kid", "pt-test")
    assert env["PAYMENT_TOKEN_KEY_ID"] == "pt-test"
    keys = private_keys_from_text(json.loads(env["PAYMENT_TOKEN_KEYS"]))
    sealed = seal(public_key_from_text(env["PAYMENT_TOKEN_PUBLIC_KEY"]), "pt-test", "tok_visa", "o")
    assert unseal(keys, sealed, aad="o") == "tok_visa"


def test_keep_adds_the_new_key_to_the_ones_payment_holds_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = generate("--kid", "old")["PAYMENT_TOKEN_KEYS"]
    monkeypatch.setenv("PAYMENT_TOKEN_KEYS", old)
    rotated = json.loads(generate("--kid", "new", "--keep")["PAYMENT_TOKEN_KEYS"])
    assert list(rotated) == ["new", "old"]
    assert rotated["old"] == json.loads(old)["old"]


def test_a_key_id_already_held_or_a_broken_configuration_is_refused_without_echoing_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAYMENT_TOKEN_KEYS", generate("--kid", "old")["PAYMENT_TOKEN_KEYS"])
    again = runner.invoke(app, ["keys", "generate", "--kid", "old", "--keep"])
    assert again.exit_code != 0 and "already has a key 'old'" in again.output
    monkeypatch.setenv("PAYMENT_TOKEN_KEYS", '{"old": "c2VjcmV0LWJ1dC1zaG9ydA"')  # no closing }
    broken = runner.invoke(app, ["keys", "generate", "--keep"])
    assert broken.exit_code != 0 and "not a JSON object" in broken.output
    assert "c2VjcmV0" not in broken.output
