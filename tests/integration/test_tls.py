"""Encryption in transit, on the real broker: the services reach RabbitMQ over AMQPS and verify
that it is the broker -- its certificate signed by Warren's CA, issued to the host they dialled.

They run where a broker listens for AMQPS: WARREN_TEST_AMQPS_URL (the operator's amqps URL with
its ``cafile``). `make test-rabbitmq4` starts its RabbitMQ 4.x node so, with certificates from
`warren certs generate`; the machine's RabbitMQ 3.10 has no TLS listener, so `make test` skips
them."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import aio_pika
import pytest
from aiormq.exceptions import AMQPConnectionError
from kombu import Connection

from shared import messaging, topology
from shared.contracts import Envelope
from shared.settings import WarrenSettings
from shared.testing.system import BIN, rabbitmqctl_command
from shared.tls import celery_broker
from tests.support.broker_users import Broker, provisioned_vhost
from tests.support.events import order_placed

AMQPS_URL = os.environ.get("WARREN_TEST_AMQPS_URL", "")
pytestmark = pytest.mark.skipif(
    not AMQPS_URL, reason="no broker with AMQPS here (WARREN_TEST_AMQPS_URL; make test-rabbitmq4)"
)


def over_tls(url: str, *, host: str | None = None, cafile: str | None = None) -> str:
    """``url`` (a user's amqp URL on the test vhost) as the same user over AMQPS: the TLS port,
    and our CA (or ``cafile``), dialling ``host`` (or the AMQPS URL's)."""
    plain, tls = urlsplit(url), urlsplit(AMQPS_URL)
    userinfo = plain.netloc.rpartition("@")[0]
    ca = cafile or parse_qs(tls.query)["cafile"][0]
    netloc = f"{userinfo}@{host or tls.hostname}:{tls.port}"
    return plain._replace(scheme="amqps", netloc=netloc, query=f"cafile={ca}").geturl()


@pytest.fixture(scope="module")
def broker(rabbit_url: str) -> Iterator[Broker]:
    with provisioned_vhost(rabbit_url, "tls") as provisioned:
        yield provisioned


@pytest.fixture(scope="module")
def stranger_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Another CA, as a machine posing as the broker would have: not ours."""
    folder = tmp_path_factory.mktemp("stranger-ca")
    subprocess.run(
        [str(BIN / "warren"), "certs", "generate", "--output", str(folder)],
        check=True,
        capture_output=True,
    )
    return str(folder / "ca.pem")


def placed(order_id: str) -> Envelope:
    return Envelope.wrap(order_placed(order_id), source="order")


def tls_connections(vhost: str) -> dict[str, str]:
    """user -> the TLS protocol of its connection on ``vhost`` ('' if in the clear), from the
    broker's own view (rabbitmqctl list_connections)."""
    command = [*ctl_command(), "list_connections", "-q", "--no-table-headers"]
    listed = subprocess.run(
        [*command, "vhost", "user", "ssl", "ssl_protocol"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    found = {}
    for line in listed.splitlines():
        on, user, secure, protocol = [*line.split("\t"), "", "", ""][:4]
        if on == vhost:
            found[user] = protocol if secure == "true" else ""
    return found


def ctl_command() -> list[str]:
    command = rabbitmqctl_command()
    assert command is not None
    return command


async def test_a_service_publishes_and_another_consumes_over_tls(broker: Broker) -> None:
    """Order publishes order.placed through FastStream (make_broker) over AMQPS; inventory takes
    it from its queue over AMQPS. The broker sees both connections encrypted."""
    vhost = urlsplit(broker.operator).path[1:]
    settings = WarrenSettings(rabbit_url=over_tls(broker.url("order")), service_name="order")
    order = messaging.make_broker(settings)
    await order.connect()
    inventory = await aio_pika.connect(over_tls(broker.url("inventory")))
    try:
        sent = placed("tls-1")
        await messaging.publish_event(order, sent)
        channel = await inventory.channel()
        queue = await channel.get_queue(topology.INVENTORY_ORDER_PLACED.name, ensure=False)
        message = None
        for _ in range(100):  # the publish is confirmed: it is there, or about to be
            if (message := await queue.get(fail=False)) is not None:
                break
            await asyncio.sleep(0.05)
        assert message is not None and message.message_id == sent.id
        await message.ack()
        secured = tls_connections(vhost)
        assert secured.get("order", "").startswith("tlsv1."), secured
        assert secured.get("inventory", "").startswith("tlsv1."), secured
    finally:
        await inventory.close()
        await order.stop()


async def test_a_server_whose_certificate_our_ca_did_not_sign_is_refused(
    broker: Broker, stranger_ca: str
) -> None:
    """Trusting another CA is what a client sees when something else answers in the broker's
    place: the handshake fails, and not a byte of the password is sent."""
    with pytest.raises(AMQPConnectionError, match="certificate verify failed") as refused:
        await aio_pika.connect(over_tls(broker.url("order"), cafile=stranger_ca))
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)


async def test_a_certificate_issued_to_another_host_is_refused(broker: Broker) -> None:
    """The broker's certificate names rabbitmq, localhost and 127.0.0.1; dialled as 127.0.0.2
    (the same broker, on another loopback address) it does not match the name."""
    with pytest.raises(AMQPConnectionError, match="IP address mismatch") as refused:
        await aio_pika.connect(over_tls(broker.url("order"), host="127.0.0.2"))
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)


def test_celery_connects_over_tls_and_verifies_the_broker_too(
    broker: Broker, stranger_ca: str
) -> None:
    """The email worker's client (py-amqp, through kombu) gets the same check from
    celery_broker: our CA accepted, another refused."""
    url, options = celery_broker(over_tls(broker.url("notification")))
    with Connection(url, ssl=options, connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=1)
        assert connection.connected
    url, options = celery_broker(over_tls(broker.url("notification"), cafile=stranger_ca))
    with Connection(url, ssl=options, connect_timeout=5) as connection:  # noqa: SIM117
        with pytest.raises(ssl.SSLCertVerificationError):
            connection.connect()
