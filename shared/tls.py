"""Encryption in transit: the services talk to RabbitMQ (and MongoDB) over TLS, and verify them.

Warren runs its own small certificate authority (``warren certs generate``): a CA that signs one
certificate per server, each naming the host names it answers to. A client trusts that CA alone
and checks the server's name, so a machine on the network that is not the broker cannot pose as
it, and nobody between them reads the traffic.

The broker's address says it all -- the scheme, the port and the CA file::

    RABBIT_URL=amqps://order@rabbitmq:5671/?cafile=/run/secrets/tls_ca

aio-pika (under FastStream, the RPC client and the CLI) reads ``cafile`` from the URL, verifies
the certificate against it and checks the host name. Celery's client (py-amqp) reads no CA from
the URL: :func:`celery_broker` hands it the same check as options. Turning verification off
(aio-pika's ``no_verify_ssl``) is refused by :func:`checked_broker_url`.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit


class InsecureUrlError(ValueError):
    """A broker URL that asks for an unverified TLS connection."""


# --8<-- [start:checked-url]
def checked_broker_url(url: str) -> str:
    """``url``, unless it turns certificate verification off: TLS that accepts any certificate
    stops nobody who can answer in the broker's place."""
    # Blank counts: aio-pika verifies only when no_verify_ssl is absent or "0".
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    if query.get("no_verify_ssl", ["0"])[0] != "0":
        raise InsecureUrlError(
            "RABBIT_URL turns certificate verification off (no_verify_ssl): give the CA "
            "instead (?cafile=/path/to/ca.pem, from `warren certs generate`)"
        )
    return url
    # --8<-- [end:checked-url]


# --8<-- [start:celery-broker]
def celery_broker(url: str) -> tuple[str, dict[str, Any] | bool]:
    """Celery's broker URL and ``broker_use_ssl`` for Warren's ``RABBIT_URL``.

    Over ``amqps`` the URL loses its query (py-amqp would not read ``cafile`` there) and the
    options carry the same check aio-pika makes: the certificate signed by the CA, and issued to
    the host the URL names. Over ``amqp``: the URL as it is, no TLS.
    """
    parts = urlsplit(url)
    if parts.scheme != "amqps":
        return url, False
    query = parse_qs(parts.query)
    options: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED,
        # py-amqp checks the name only when it is given one.
        "server_hostname": parts.hostname,
    }
    if query.get("cafile"):
        options["ca_certs"] = query["cafile"][0]
    return parts._replace(query="").geturl(), options
    # --8<-- [end:celery-broker]
