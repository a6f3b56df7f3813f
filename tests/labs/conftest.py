"""The labs' brokers, each on this machine: Redis (it is part of the machine: a test fails, not
skips, when it does not answer), RabbitMQ's vhost `warren-labs` (created here, never "/"),
moto's server (started for the session, stopped by its PID), and Kafka only where one answers.

Environment: REDIS_URL, RABBIT_URL (its host and user; the vhost is always warren-labs),
KAFKA_BOOTSTRAP (default localhost:9092).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
import redis

from labs.kafka import reachable
from labs.sqs.moto_server import MotoServer
from shared.testing.system import rabbitmqctl_command

LABS_VHOST = "warren-labs"


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis at {url} does not answer ({exc!r}). It runs on this machine: start it with "
            "redis-server --daemonize yes --save '' --appendonly no"
        )
    return url


@pytest.fixture(scope="session")
async def labs_rabbit_url(rabbit_url: str) -> str:
    """RABBIT_URL's broker and user, in the vhost warren-labs (created if missing)."""
    parts = urlsplit(rabbit_url)
    url = urlunsplit(parts._replace(path=f"/{LABS_VHOST}"))
    if ctl := rabbitmqctl_command():
        user = parts.username or "guest"
        for args in (["add_vhost", LABS_VHOST], ["set_permissions", "-p", LABS_VHOST, user]):
            extra = [".*", ".*", ".*"] if args[0] == "set_permissions" else []
            subprocess.run([*ctl, *args, *extra], check=True, capture_output=True, timeout=60)
    try:
        connection = await aio_pika.connect(url, timeout=10)
    except Exception as exc:
        pytest.fail(f"cannot open {url} ({exc!r}): create the vhost {LABS_VHOST} (labs/README.md)")
    await connection.close()
    return url


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    """moto's server on a free port for the whole session."""
    server = MotoServer()
    endpoint = server.start()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092")
    if not reachable(bootstrap):
        pytest.skip(
            f"no Kafka answers at {bootstrap} (none runs where Warren is developed): start one "
            "with `docker compose -f labs/kafka/docker-compose.yml up -d --wait`, then "
            f"KAFKA_BOOTSTRAP={bootstrap} .venv/bin/pytest tests/labs -k kafka"
        )
    return bootstrap
