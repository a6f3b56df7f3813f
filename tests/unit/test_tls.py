"""The TLS settings a service derives from its RABBIT_URL (the handshakes themselves are tested
against the real broker: tests/integration/test_tls.py)."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from shared.settings import WarrenSettings
from shared.tls import celery_broker

TLS_URL = "amqps://notification:secret@rabbitmq:5671/shop?cafile=/run/secrets/tls_ca"


@pytest.mark.parametrize("value", ["1", "", "true"])
def test_a_broker_url_that_turns_verification_off_is_refused(value: str) -> None:
    """aio-pika verifies only when no_verify_ssl is absent or "0": anything else, even blank,
    would accept any certificate."""
    url = f"amqps://order:secret@rabbitmq:5671/?cafile=/ca.pem&no_verify_ssl={value}"
    with pytest.raises(ValidationError, match="verification off") as refused:
        WarrenSettings(rabbit_url=url)
    assert "secret" not in str(refused.value)


def test_a_verified_tls_url_is_kept_as_it_is() -> None:
    assert WarrenSettings(rabbit_url=TLS_URL).rabbit_url == TLS_URL


def test_celery_gets_the_ca_and_the_host_name_to_check() -> None:
    url, options = celery_broker(TLS_URL)
    assert url == "amqps://notification:secret@rabbitmq:5671/shop"  # py-amqp: no query
    assert options == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "rabbitmq",
        "ca_certs": "/run/secrets/tls_ca",
    }


def test_celery_over_plain_amqp_gets_no_tls() -> None:
    url = "amqp://notification:secret@rabbitmq:5672/"
    assert celery_broker(url) == (url, False)
